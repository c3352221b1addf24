// SPDX-License-Identifier: GPL-2.0
/* fleetmon: keeps the samples its registered sources give it */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>

#include "core.h"

#ifndef FLEETMON_MAX_SOURCES
#error "the manifest's cflags define FLEETMON_MAX_SOURCES"
#endif

static unsigned int interval = 5;
module_param(interval, uint, 0444);
MODULE_PARM_DESC(interval, "seconds between samples (default 5)");

static DEFINE_MUTEX(fleetmon_lock);
static struct fleetmon_source *sources[FLEETMON_MAX_SOURCES];

int fleetmon_register(struct fleetmon_source *src)
{
	int i, ret = -ENOSPC;

	mutex_lock(&fleetmon_lock);
	for (i = 0; i < FLEETMON_MAX_SOURCES; i++) {
		if (!sources[i]) {
			sources[i] = src;
			fleetmon_ring_push(src->sample());
			pr_info("source %s registered\n", src->name);
			ret = 0;
			break;
		}
	}
	mutex_unlock(&fleetmon_lock);
	return ret;
}
EXPORT_SYMBOL_GPL(fleetmon_register);

void fleetmon_unregister(struct fleetmon_source *src)
{
	int i;

	mutex_lock(&fleetmon_lock);
	for (i = 0; i < FLEETMON_MAX_SOURCES; i++)
		if (sources[i] == src)
			sources[i] = NULL;
	mutex_unlock(&fleetmon_lock);
}
EXPORT_SYMBOL_GPL(fleetmon_unregister);

static int __init fleetmon_init(void)
{
	pr_info("up, interval %u s, last sample %lu\n", interval, fleetmon_ring_last());
	return 0;
}

static void __exit fleetmon_exit(void)
{
	pr_info("down\n");
}

module_init(fleetmon_init);
module_exit(fleetmon_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("fleet monitoring core");
MODULE_VERSION("1.0.0");
