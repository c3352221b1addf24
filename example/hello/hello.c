// SPDX-License-Identifier: GPL-2.0
/*
 * hello: the hello module
 *
 * Build:  make                     (for the running kernel)
 *         kmodkit build --all-installed
 * Load:   insmod hello.ko repeat=2
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>

#include "hello.h"

static int repeat = 1;
/* 0444: readable by all in /sys/module/hello/parameters, writable by none */
module_param(repeat, int, 0444);
MODULE_PARM_DESC(repeat, "how many times to greet at load (default 1)");

static unsigned int hello_greetings;

/* Exported with the module's prefix, to GPL modules only. */
unsigned int hello_count(void)
{
	return hello_greetings;
}
EXPORT_SYMBOL_GPL(hello_count);

static int __init hello_init(void)
{
	int i;

	if (repeat < 0 || repeat > 16)
		return -EINVAL;
	for (i = 0; i < repeat; i++) {
		pr_info("hello from hello (%d of %d)\n", i + 1, repeat);
		hello_greetings++;
	}
	return 0;
}

static void __exit hello_exit(void)
{
	pr_info("goodbye after %u greetings\n", hello_greetings);
}

module_init(hello_init);
module_exit(hello_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodkit");
MODULE_DESCRIPTION("the hello module");
MODULE_VERSION("0.1.0");
