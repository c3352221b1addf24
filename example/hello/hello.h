/* SPDX-License-Identifier: GPL-2.0 */
/* What hello exports to other modules. */
#ifndef HELLO_H
#define HELLO_H

/* How many greetings hello has printed since it was loaded. */
unsigned int hello_count(void);

#endif /* HELLO_H */
