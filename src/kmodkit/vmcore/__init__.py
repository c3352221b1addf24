"""Crash dumps: reading a kernel's vmcore (an ELF core of its memory) without its debug vmlinux.

``elfcore`` reads the ELF core (segments, notes), ``vmcoreinfo`` the kernel's own description of
itself in the VMCOREINFO note, ``memory`` turns kernel virtual addresses into bytes of the file, and
``printk`` walks the lockless printk ring buffer into log records.
"""
