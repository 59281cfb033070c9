/* event primitive commands (being built). */
#include "internal.h"

const struct op_def event_ops[] = {
    {NULL, 0, NULL},
};
