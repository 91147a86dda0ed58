/* fastnn status codes: shared by the kernel API (fastnn.h) and the stable C ABI
 * (fastnn_api.h). Values never change; new codes are only appended. */
#ifndef FASTNN_STATUS_H
#define FASTNN_STATUS_H

typedef enum {
    FASTNN_OK = 0,
    FASTNN_EINVAL = 1,   /* a size, enum or scalar argument is out of range */
    FASTNN_ENULL = 2,    /* a required pointer is NULL while its size is > 0 */
    FASTNN_ENOMEM = 3,   /* an internal buffer could not be allocated */
    FASTNN_ELABEL = 4,   /* a class label is outside [0, classes) */
    FASTNN_EARCH = 5,    /* the requested kernel table is not compiled or not supported by this CPU */
    FASTNN_ENONFINITE = 6, /* training stopped: a batch's loss was NaN or infinite (no update made) */
    FASTNN_EIO = 7,      /* a file could not be opened, read, written or renamed */
    FASTNN_EFORMAT = 8,  /* a file or JSON text is corrupt, truncated or not a fastnn model */
    FASTNN_EUNSUPPORTED = 9 /* valid, but not supported by this build (a layer, a dtype) */
} fastnn_status;

#endif
