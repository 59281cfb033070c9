/* state primitive commands (being built). */
#include "internal.h"

const struct op_def state_ops[] = {
    {NULL, 0, NULL},
};
