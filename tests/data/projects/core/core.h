/* SPDX-License-Identifier: GPL-2.0 */
/* core.h: the interface fleetmon exports to its sources and to other modules. */
#ifndef FLEETMON_CORE_H
#define FLEETMON_CORE_H

struct fleetmon_source {
	const char *name;
	unsigned long (*sample)(void);
};

int fleetmon_register(struct fleetmon_source *src);
void fleetmon_unregister(struct fleetmon_source *src);

/* lib/ring.c: shared between the files of the fleetmon module only */
void fleetmon_ring_push(unsigned long value);
unsigned long fleetmon_ring_last(void);

#endif
