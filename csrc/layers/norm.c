/* Batch normalization (per channel of NCHW / NC / NCL arrays) and layer normalization (per
 * row), forward and backward. The naive references are in csrc/ref/norm.c. */
#include <math.h>
#include "ref/common.h"
#include "ref/vec.h"
#include "layers/norm_entry.h"

#define FASTNN_TEMPLATE "layers/norm.inc"
#include "ref/template.h"

FASTNN_NORM_ENTRY()
