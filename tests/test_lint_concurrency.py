"""The concurrency rules (barrier-without-comment, plain-access-of-shared, sleep-under-spinlock) beyond their
rules.toml examples: what counts as a handler, a lock region, a pairing comment; and kernel-style code that
does it right stays clean (false positives are the cost of such rules)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmodkit.lint.linter import Linter
from kmodkit.lint.rules import rules

CONCURRENCY = ["barrier-without-comment", "plain-access-of-shared", "sleep-under-spinlock"]
EXAMPLE = Path(__file__).parent.parent / "example" / "hello"


def _found(tmp_path: Path, text: str, rule: str) -> list[tuple[int, str]]:
    src = tmp_path / "demo.c"
    src.write_text(text)
    return [(f.line, f.message) for f in Linter(src, only=[rule]).run().findings]


IRQ = """\
#include <linux/module.h>
#include <linux/interrupt.h>
static DEFINE_SPINLOCK(demo_lock);
static unsigned int demo_events;
static atomic_t demo_total;
static irqreturn_t demo_irq(int irq, void *dev)
{
	demo_events++;
	atomic_inc(&demo_total);
	return IRQ_HANDLED;
}
static unsigned int demo_peek(void)
{
	return demo_events;
}
static unsigned int demo_take(void)
{
	unsigned long flags;
	unsigned int n;

	spin_lock_irqsave(&demo_lock, flags);
	n = demo_events;
	demo_events = 0;
	spin_unlock_irqrestore(&demo_lock, flags);
	return n + atomic_read(&demo_total);
}
static int demo_shadow(int demo_events)
{
	return demo_events;
}
static int __init demo_init(void)
{
	demo_events = 0;
	return 0;
}
static int demo_copy(void)
{
	unsigned int n = demo_events;

	return n;
}
"""


def test_a_variable_an_irq_handler_uses_is_reported_where_read_plainly(tmp_path: Path) -> None:
    """The handler is known by its irqreturn_t; the locked read, the atomic_t, the parameter of the same
    name and __init (before the handler can run) are not reported; a local's initializer is."""
    found = _found(tmp_path, IRQ, "plain-access-of-shared")
    assert [line for line, _ in found] == [14, 38]  # 38: an initializer is a plain load too
    assert "demo_irq()" in found[0][1] and "'demo_events'" in found[0][1]


def test_a_timer_callback_is_a_handler_by_its_registration(tmp_path: Path) -> None:
    text = """\
#include <linux/module.h>
#include <linux/timer.h>
static struct timer_list demo_timer;
static bool demo_fired;
static void demo_expire(struct timer_list *t)
{
	demo_fired = true;
}
static bool demo_done(void)
{
	return demo_fired;
}
static int __init demo_init(void)
{
	timer_setup(&demo_timer, demo_expire, 0);
	return 0;
}
"""
    assert [line for line, _ in _found(tmp_path, text, "plain-access-of-shared")] == [11]
    # both sides marked: a plain store in the callback would race with the READ_ONCE
    fixed = text.replace("\treturn demo_fired;", "\treturn READ_ONCE(demo_fired);")
    assert [line for line, _ in _found(tmp_path, fixed, "plain-access-of-shared")] == [7]
    fixed = fixed.replace("\tdemo_fired = true;", "\tWRITE_ONCE(demo_fired, true);")
    assert _found(tmp_path, fixed, "plain-access-of-shared") == []


def test_a_file_scope_timer_and_a_read_only_parameter(tmp_path: Path) -> None:
    """DEFINE_TIMER names its callback at file scope; 'verbose' is only ever read (set at load time), so
    reading it in the callback and elsewhere races with nothing, while 'demo_deadline' is stored plainly."""
    text = """\
#include <linux/module.h>
#include <linux/timer.h>
static int verbose;
module_param(verbose, int, 0444);
MODULE_PARM_DESC(verbose, "log more");
static unsigned long demo_deadline;
static void demo_check(struct timer_list *t);
static DEFINE_TIMER(demo_timer, demo_check);
static void demo_check(struct timer_list *t)
{
	if (verbose && time_after(jiffies, demo_deadline))
		pr_info("late\\n");
}
static void demo_kick(void)
{
	if (verbose)
		pr_info("kick\\n");
	demo_deadline = jiffies + HZ;
}
"""
    found = _found(tmp_path, text, "plain-access-of-shared")
    assert [line for line, _ in found] == [18] and "'demo_deadline'" in found[0][1]


def test_a_handlers_plain_store_of_a_marked_variable_is_reported(tmp_path: Path) -> None:
    """Process context reads demo_pending with READ_ONCE; the interrupt handler's plain store races with it
    (and its plain read of demo_seen, which only it and locked code touch, does not count)."""
    text = """\
#include <linux/module.h>
#include <linux/interrupt.h>
static DEFINE_SPINLOCK(demo_lock);
static bool demo_pending;
static unsigned int demo_seen;
static irqreturn_t demo_irq(int irq, void *dev)
{
	demo_pending = true;
	spin_lock(&demo_lock);
	demo_seen++;
	spin_unlock(&demo_lock);
	return demo_seen ? IRQ_HANDLED : IRQ_NONE;
}
static bool demo_poll(void)
{
	return READ_ONCE(demo_pending);
}
"""
    found = _found(tmp_path, text, "plain-access-of-shared")
    assert [line for line, _ in found] == [8] and "READ_ONCE() at demo.c:16" in found[0][1]


def test_taking_the_address_is_no_plain_access(tmp_path: Path) -> None:
    """set_bit(0, &demo_bits) is an atomic access through a pointer; only the plain read is reported."""
    text = """\
#include <linux/module.h>
static unsigned long demo_bits;
static bool demo_busy(void)
{
	return READ_ONCE(demo_bits) != 0;
}
static void demo_mark(void)
{
	set_bit(0, &demo_bits);
}
static unsigned long demo_peek(void)
{
	return demo_bits;
}
"""
    assert [line for line, _ in _found(tmp_path, text, "plain-access-of-shared")] == [13]


def test_allocators_with_the_gfp_flag_first_or_last(tmp_path: Path) -> None:
    text = """\
#include <linux/module.h>
#include <linux/gfp.h>
static DEFINE_SPINLOCK(demo_lock);
static struct page *demo_fill(void)
{
	struct page *p, *q;

	spin_lock(&demo_lock);
	p = alloc_pages(GFP_KERNEL, 0);
	q = alloc_pages(GFP_ATOMIC | __GFP_ZERO, 0);
	spin_unlock(&demo_lock);
	return p ? p : q;
}
"""
    assert [line for line, _ in _found(tmp_path, text, "sleep-under-spinlock")] == [9]


def test_sleeping_calls_are_reported_only_inside_the_lock_region(tmp_path: Path) -> None:
    text = """\
#include <linux/module.h>
#include <linux/slab.h>
static DEFINE_SPINLOCK(demo_lock);
static DEFINE_MUTEX(demo_mutex);
static void *demo_a, *demo_b;
static long demo_work(void __user *to)
{
	unsigned long flags;

	demo_b = kmalloc(64, GFP_KERNEL);
	spin_lock_irqsave(&demo_lock, flags);
	demo_a = kzalloc(64, GFP_ATOMIC);
	raw_spin_lock(&demo_raw);
	msleep(1);
	raw_spin_unlock(&demo_raw);
	mutex_lock(&demo_mutex);
	if (copy_to_user(to, demo_a, 64))
		return -EFAULT;
	demo_b = kcalloc(4, 16, GFP_KERNEL | __GFP_ZERO);
	spin_unlock_irqrestore(&demo_lock, flags);
	msleep(1);
	mutex_unlock(&demo_mutex);
	return 0;
}
"""
    found = _found(tmp_path, text, "sleep-under-spinlock")
    assert [line for line, _ in found] == [14, 16, 17, 19]
    assert all("spin_lock_irqsave() at line 11" in message for _, message in found)
    assert "GFP_KERNEL" in found[-1][1]


def test_a_barrier_comment_may_sit_on_its_line_or_just_above(tmp_path: Path) -> None:
    text = """\
#include <linux/module.h>
static int demo_flag, demo_val;
static void demo_a(int v)
{
	/*
	 * Pairs with smp_load_acquire() in demo_b(): demo_val is set
	 * before demo_flag is seen.
	 */
	demo_val = v;
	smp_store_release(&demo_flag, 1);
}
static int demo_b(void)
{
	/* a comment too far above to be about the barrier */
	int v = 0;

	v += 1;
	v += 2;
	v += 3;
	if (smp_load_acquire(&demo_flag))
		v = demo_val;
	smp_mb(); // pairs with the smp_mb() in demo_c()
	return v;
}
"""
    assert [line for line, _ in _found(tmp_path, text, "barrier-without-comment")] == [20]


KERNEL_STYLE = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
#include <linux/interrupt.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/timer.h>
#include <linux/uaccess.h>

struct demo_item {
	struct list_head node;
	u32 value;
};

static DEFINE_SPINLOCK(demo_lock);
static LIST_HEAD(demo_items);
static struct timer_list demo_timer;
static unsigned long demo_ticks;
static bool demo_stopping;
static int demo_irq_nr = -1;
module_param(demo_irq_nr, int, 0444);
MODULE_PARM_DESC(demo_irq_nr, "interrupt to watch, -1 for none");

static irqreturn_t demo_irq(int irq, void *dev)
{
	struct demo_item *item = kmalloc(sizeof(*item), GFP_ATOMIC);

	if (!item)
		return IRQ_NONE;
	item->value = irq;
	spin_lock(&demo_lock);
	list_add_tail(&item->node, &demo_items);
	spin_unlock(&demo_lock);
	return IRQ_HANDLED;
}

static void demo_tick(struct timer_list *t)
{
	WRITE_ONCE(demo_ticks, demo_ticks + 1);
	if (!READ_ONCE(demo_stopping))
		mod_timer(&demo_timer, jiffies + HZ);
}

static long demo_drain(u32 __user *to, size_t n)
{
	struct demo_item *item, *tmp;
	LIST_HEAD(local);
	size_t done = 0;

	spin_lock_irq(&demo_lock);
	list_splice_init(&demo_items, &local);
	spin_unlock_irq(&demo_lock);
	list_for_each_entry_safe(item, tmp, &local, node) {
		if (done < n && put_user(item->value, to + done) == 0)
			done++;
		list_del(&item->node);
		kfree(item);
	}
	return done + READ_ONCE(demo_ticks);
}

static int __init demo_init(void)
{
	timer_setup(&demo_timer, demo_tick, 0);
	mod_timer(&demo_timer, jiffies + HZ);
	if (demo_irq_nr >= 0)
		return request_irq(demo_irq_nr, demo_irq, IRQF_SHARED, "demo", &demo_items);
	return 0;
}

static void __exit demo_exit(void)
{
	WRITE_ONCE(demo_stopping, true);
	/* demo_stopping is seen by the timer before it is deleted; pairs with the timer's own locking */
	smp_mb();
	timer_delete_sync(&demo_timer);
	if (demo_irq_nr >= 0)
		free_irq(demo_irq_nr, &demo_items);
}

module_init(demo_init);
module_exit(demo_exit);
MODULE_LICENSE("GPL");
MODULE_VERSION("1.0");
"""


def test_kernel_style_code_that_does_it_right_is_clean(tmp_path: Path) -> None:
    src = tmp_path / "demo.c"
    src.write_text(KERNEL_STYLE)
    assert Linter(src, only=CONCURRENCY + ["non-static-global", "missing-license"]).run().findings == ()


@pytest.mark.parametrize("rule", list(rules().values()), ids=lambda r: r.id)
def test_no_good_example_breaks_a_concurrency_rule(rule: object, tmp_path: Path) -> None:
    src = tmp_path / "demo.c"
    src.write_text(rule.good)  # type: ignore[attr-defined]
    assert Linter(src, only=CONCURRENCY).run().findings == ()


def test_the_bundled_example_is_clean_of_the_concurrency_rules() -> None:
    assert Linter(EXAMPLE, only=CONCURRENCY).run().findings == ()
