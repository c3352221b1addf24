"""The ``Code:`` line of an x86 report disassembled with capstone, the faulting instruction marked."""

from __future__ import annotations

from dataclasses import dataclass

from kmodkit.klog.report import Code


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction of the Code: line."""

    offset: int  #: bytes from the first byte of the Code: line
    text: str  #: mnemonic and operands
    faulting: bool  #: the instruction the report marks (<..>)

    def to_json(self) -> dict[str, object]:
        """The instruction as a JSON object."""
        return {"offset": self.offset, "text": self.text, "faulting": self.faulting}


def disassemble(code: Code, bits: int = 64) -> list[Instruction]:
    """The instructions from the faulting one on (bytes before it may start mid-instruction, so they
    are decoded only when they end exactly there); [] for code that is not x86 or not marked."""
    import capstone

    if code.unit != 1 or code.fault is None:
        return []
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if bits == 64 else capstone.CS_MODE_32)
    before: list[Instruction] = []
    for start in range(0, code.fault):  # the earliest start that decodes to the faulting byte exactly
        insns = list(md.disasm(code.data[start:code.fault], start))
        if insns and insns[-1].address + insns[-1].size == code.fault \
                and sum(i.size for i in insns) == code.fault - start:
            before = [Instruction(i.address, f"{i.mnemonic} {i.op_str}".strip(), False) for i in insns]
            break
    after = [Instruction(i.address, f"{i.mnemonic} {i.op_str}".strip(), i.address == code.fault)
             for i in md.disasm(code.data[code.fault:], code.fault)]
    return before + after
