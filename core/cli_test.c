/* cli_test.c - placeholder for `evlua test` (issue 15). */
#include "cli.h"
