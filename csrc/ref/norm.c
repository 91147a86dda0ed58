/* Naive references of the normalization kernels (csrc/layers/norm.c): the same arguments,
 * checks and results, one thread. */
#include <math.h>
#include "ref/common.h"
#include "layers/norm_entry.h"

#define FASTNN_TEMPLATE "ref/norm.inc"
#include "ref/template.h"

FASTNN_NORM_ENTRY(_ref)
