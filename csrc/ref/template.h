/* Instantiate a kernel source file (*.inc) for float and double.
 * Usage in a .c file:  #define FASTNN_TEMPLATE "file.inc"  then  #include "template.h".
 * Inside the .inc, T is the element type and S(name) appends _f32 or _f64. */
#define T float
#define S(name) name##_f32
#include FASTNN_TEMPLATE
#undef T
#undef S
#define T double
#define S(name) name##_f64
#include FASTNN_TEMPLATE
#undef T
#undef S
