/* json primitive commands (being built). */
#include "internal.h"

const struct op_def json_ops[] = {
    {NULL, 0, NULL},
};
