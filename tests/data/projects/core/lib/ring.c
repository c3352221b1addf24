// SPDX-License-Identifier: GPL-2.0
/* ring.c: fleetmon's sample ring, shared with fleetmon_main.c through core.h */
#include <linux/compiler.h>

#include "core.h"

#define RING 16
static unsigned long ring[RING];
static unsigned int head;

void fleetmon_ring_push(unsigned long value)
{
	ring[head++ % RING] = value;
}

unsigned long fleetmon_ring_last(void)
{
	return ring[(head + RING - 1) % RING];
}
