/* pattern.c - placeholder (issue 15). */
#include "pattern.h"
