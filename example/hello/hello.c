// SPDX-License-Identifier: GPL-2.0
/*
 * hello: the hello module
 *
 * Build:  make                     (for the running kernel)
 *         kmodkit build --all-installed
 * Load:   insmod hello.ko repeat=2
 * Use:    echo > /proc/driver/hello   (each write runs `loops` calls of hello_step,
 *         under a spinlock when spin_us > 0, then sleeps sleep_ms; change them in
 *         /sys/module/hello/parameters/ to measure with kmodkit trace and kmodkit profile)
 * Crash:  echo 1 > /sys/module/hello/parameters/crash; echo > /proc/driver/hello
 *         (a demo aid: the write faults through a NULL pointer on purpose, for kmodkit oops)
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/spinlock.h>

#include "hello.h"

static int repeat = 1;
/* 0444: readable by all in /sys/module/hello/parameters, writable by none */
module_param(repeat, int, 0444);
MODULE_PARM_DESC(repeat, "how many times to greet at load (default 1)");

static int loops = 100;
/* 0644: root may change it while the module is loaded */
module_param(loops, int, 0644);
MODULE_PARM_DESC(loops, "calls of the helper per write to /proc/driver/hello, 0-1000000 (default 100)");

static int sleep_ms;
module_param(sleep_ms, int, 0644);
MODULE_PARM_DESC(sleep_ms, "milliseconds each write sleeps after its loop, 0-10000 (default 0)");

static int spin_us;
module_param(spin_us, int, 0644);
MODULE_PARM_DESC(spin_us, "when > 0, each helper call holds a spinlock this many microseconds, 0-1000 (default 0)");

static bool crash;
/* a demo aid: the next write to /proc/driver/hello oopses, to show `kmodkit vm run` decoding it */
module_param(crash, bool, 0644);
MODULE_PARM_DESC(crash, "demo aid: when set, a write to /proc/driver/hello faults through a NULL pointer (default N)");

static unsigned int hello_greetings;
static DEFINE_SPINLOCK(hello_lock);
static u64 hello_total;
static u64 *hello_sink;	/* never set: the crash parameter writes through it */

/* Exported with the module's prefix, to GPL modules only. */
unsigned int hello_count(void)
{
	return hello_greetings;
}
EXPORT_SYMBOL_GPL(hello_count);

/* One unit of work.  noinline: tracing and profiling see every call as a call. */
static noinline u64 hello_step(u64 x)
{
	int i;

	for (i = 0; i < 64; i++)
		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
	return x;
}

/* The same work holding hello_lock: writers on several CPUs contend here. */
static noinline void hello_step_locked(u64 x, unsigned int hold_us)
{
	spin_lock(&hello_lock);
	udelay(hold_us);
	hello_total += hello_step(x);
	spin_unlock(&hello_lock);
}

/* The crash parameter's fault: a store through a NULL pointer, reported by the kernel as an oops here. */
static noinline void hello_fault(u64 *where)
{
	WRITE_ONCE(*where, READ_ONCE(hello_total));
}

/* A write to /proc/driver/hello: `loops` helper calls, then `sleep_ms` of sleep. */
static ssize_t hello_write(struct file *file, const char __user *buf, size_t len, loff_t *pos)
{
	int n = READ_ONCE(loops), nap = READ_ONCE(sleep_ms), hold = READ_ONCE(spin_us);
	u64 local = 0;
	int i;

	if (n < 0 || n > 1000000 || nap < 0 || nap > 10000 || hold < 0 || hold > 1000)
		return -EINVAL;
	if (READ_ONCE(crash))
		hello_fault(READ_ONCE(hello_sink));
	for (i = 0; i < n; i++) {
		if (hold > 0)
			hello_step_locked(i, hold);
		else
			local += hello_step(i);
		cond_resched();
	}
	if (nap > 0)
		msleep(nap);
	WRITE_ONCE(hello_total, READ_ONCE(hello_total) + local);
	return len;
}

static const struct proc_ops hello_proc_ops = {
	.proc_write = hello_write,
};

static int __init hello_init(void)
{
	int i;

	if (repeat < 0 || repeat > 16)
		return -EINVAL;
	for (i = 0; i < repeat; i++) {
		pr_info("hello from hello (%d of %d)\n", i + 1, repeat);
		hello_greetings++;
	}
	/* 0200: only root may write */
	if (!proc_create("driver/hello", 0200, NULL, &hello_proc_ops))
		return -ENOMEM;
	return 0;
}

static void __exit hello_exit(void)
{
	remove_proc_entry("driver/hello", NULL);
	pr_info("goodbye after %u greetings\n", hello_greetings);
}

module_init(hello_init);
module_exit(hello_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodkit");
MODULE_DESCRIPTION("the hello module");
MODULE_VERSION("0.1.0");
