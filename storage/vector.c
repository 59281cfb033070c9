/* vector primitive commands (being built). */
#include "internal.h"

const struct op_def vector_ops[] = {
    {NULL, 0, NULL},
};
