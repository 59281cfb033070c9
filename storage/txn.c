/* txn primitive commands (being built). */
#include "internal.h"

const struct op_def txn_ops[] = {
    {NULL, 0, NULL},
};
