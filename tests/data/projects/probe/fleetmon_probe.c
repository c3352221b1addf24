// SPDX-License-Identifier: GPL-2.0
/* fleetmon_probe: a second project's source for fleetmon, through the first project's header */
#include <linux/module.h>

#include "../core/core.h"

static unsigned int probe_value = 42;
module_param(probe_value, uint, 0444);
MODULE_PARM_DESC(probe_value, "the value the probe reports (default 42)");

static unsigned long sample_probe(void)
{
	return probe_value;
}

static struct fleetmon_source source = { .name = "probe", .sample = sample_probe };

static int __init fleetmon_probe_init(void)
{
	return fleetmon_register(&source);
}

static void __exit fleetmon_probe_exit(void)
{
	fleetmon_unregister(&source);
}

module_init(fleetmon_probe_init);
module_exit(fleetmon_probe_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("fleetmon source: a fixed probe value");
MODULE_VERSION("1.0.0");
