// SPDX-License-Identifier: GPL-2.0
/* fleetmon_jiffies: a fleetmon source that samples jiffies */
#include <linux/jiffies.h>
#include <linux/module.h>

#include "core.h"

static unsigned long sample_jiffies(void)
{
	return jiffies;
}

static struct fleetmon_source source = { .name = "jiffies", .sample = sample_jiffies };

static int __init fleetmon_jiffies_init(void)
{
	return fleetmon_register(&source);
}

static void __exit fleetmon_jiffies_exit(void)
{
	fleetmon_unregister(&source);
}

module_init(fleetmon_jiffies_init);
module_exit(fleetmon_jiffies_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("fleetmon source: jiffies");
MODULE_VERSION("1.0.0");
