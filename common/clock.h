/* The one clock for durations and deadlines: monotonic seconds, unaffected
 * by changes of the wall clock. */
#ifndef FRANCA_CLOCK_H
#define FRANCA_CLOCK_H

#include <time.h>

static inline double clock_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
