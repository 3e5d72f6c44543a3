/* pattern.h - placeholder; the sandbox's budgeted Lua pattern matcher
 * lands here (issue 15). */
#ifndef EVL_PATTERN_H
#define EVL_PATTERN_H
#endif
