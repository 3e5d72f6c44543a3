/*
 * cli_test.c - `evlua test`: run a project's busted specs with evlua's
 * Lua modules (evlua.testing and the evlua_host C module) on the Lua
 * paths, so a script author needs neither a root install nor LUA_PATH.
 *
 * The modules are looked up from where this binary is, never from the
 * current directory: in a build tree (evlua_host.so beside the binary,
 * evlua/testing.lua in the source tree CMakeCache.txt names), else in the
 * install prefix the binary sits in (PREFIX/bin/evlua: the module under
 * PREFIX/lib[64][/MULTIARCH]/lua/5.4, the library under
 * PREFIX/share/lua/5.4, where CMakeLists.txt installs them). A relocated
 * or DESTDIR install works the same. Then busted replaces this process
 * (execvp), so its exit status is ours.
 */
#include <errno.h>
#include <glob.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

static const char test_usage[] =
    "usage: evlua test [DIR|FILE] [BUSTED-ARGS...]\n"
    "       evlua test --paths\n"
    "\n"
    "Run busted on a project's specs with evlua's Lua modules (evlua.testing\n"
    "and the evlua_host module) on the Lua paths: no install to /usr/local\n"
    "and no LUA_PATH needed. Run it from the project's root: specs load their\n"
    "scripts with testing.load{ root = \".\" }.\n"
    "\n"
    "  DIR|FILE    the specs to run (default: ./spec, or what ./.busted\n"
    "              configures); every other argument goes to busted\n"
    "              (-o TAP, --run=NAME, --filter=PATTERN, ...)\n"
    "  --paths     print the LUA_PATH_5_4 and LUA_CPATH_5_4 that evlua test\n"
    "              sets, as shell exports (eval \"$(evlua test --paths)\"),\n"
    "              for editors and other runners, and exit\n"
    "  -h, --help  show this help and exit\n"
    "\n"
    "The modules come from beside this evlua binary in a build tree, else\n"
    "from its install prefix (PREFIX/lib/lua/5.4, PREFIX/share/lua/5.4).\n"
    "busted is EVLUA_BUSTED, else `busted` on PATH; it must run on Lua 5.4.\n"
    "\n"
    "Exit status: busted's (0 when every spec passed); 2 on a usage error,\n"
    "or when busted or evlua's modules cannot be found.\n";

/* snprintf that says whether all of it fitted (0) or not (-1): a path
 * too long to hold is a path not found. */
static int fmt(char *out, size_t len, const char *f, ...)
    __attribute__((format(printf, 3, 4)));
static int fmt(char *out, size_t len, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(out, len, f, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < len ? 0 : -1;
}

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* The source directory of the build tree dir, from its CMakeCache.txt
 * (evlua_SOURCE_DIR), into out. Returns 0 when found. */
static int source_dir(const char *dir, char *out, size_t outlen)
{
    static const char key[] = "evlua_SOURCE_DIR:STATIC=";
    char path[PATH_MAX + 32], line[PATH_MAX + 64];
    int found = -1;
    FILE *f = fmt(path, sizeof path, "%s/CMakeCache.txt", dir) == 0
                  ? fopen(path, "r")
                  : NULL;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, sizeof key - 1) == 0) {
            line[strcspn(line, "\r\n")] = '\0';
            found = fmt(out, outlen, "%s", line + sizeof key - 1);
            break;
        }
    }
    fclose(f);
    return found;
}

/* Where evlua_host.so (cmod) and evlua/testing.lua (lmod, the directory
 * that holds evlua/) are for the binary at exe. Returns 0 when both were
 * found; else -1 with where it looked in tried. */
static int find_modules(const char *exe, char *cmod, char *lmod, size_t len,
                        char *tried, size_t triedlen)
{
    char dir[PATH_MAX], prefix[PATH_MAX], src[PATH_MAX], probe[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s", exe);
    char *slash = strrchr(dir, '/');
    if (!slash)
        return -1;
    *slash = '\0';

    /* a build tree: the module beside the binary */
    if (fmt(probe, sizeof probe, "%s/evlua_host.so", dir) == 0 &&
        is_file(probe) && source_dir(dir, src, sizeof src) == 0 &&
        fmt(probe, sizeof probe, "%s/core/lua/evlua/testing.lua", src) == 0 &&
        is_file(probe) && fmt(cmod, len, "%s", dir) == 0 &&
        fmt(lmod, len, "%s/core/lua", src) == 0)
        return 0;

    /* an install: PREFIX/bin/evlua */
    snprintf(prefix, sizeof prefix, "%s", dir);
    slash = strrchr(prefix, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(prefix, sizeof prefix, ".");
    snprintf(tried, triedlen,
             "%s/evlua_host.so (build tree), %s/lib{,64,/*}/lua/5.4/"
             "evlua_host.so and %s/share/lua/5.4/evlua/testing.lua",
             dir, prefix, prefix);
    if (fmt(probe, sizeof probe, "%s/share/lua/5.4/evlua/testing.lua",
            prefix) != 0 ||
        !is_file(probe))
        return -1;
    static const char *const libdirs[] = {"lib", "lib64", "lib/*"};
    int found = -1;
    for (size_t i = 0; i < 3 && found != 0; i++) {
        glob_t g;
        if (fmt(probe, sizeof probe, "%s/%s/lua/5.4/evlua_host.so", prefix,
                libdirs[i]) != 0)
            continue;
        memset(&g, 0, sizeof g);
        if (glob(probe, 0, NULL, &g) == 0 && g.gl_pathc > 0 &&
            fmt(cmod, len, "%s", g.gl_pathv[0]) == 0) {
            *strrchr(cmod, '/') = '\0';
            found = 0;
        }
        globfree(&g);
    }
    if (found == 0)
        found = fmt(lmod, len, "%s/share/lua/5.4", prefix);
    return found;
}

/* ours, then what the user had (LUA_PATH_5_4, else LUA_PATH), and Lua's
 * defaults unless the user's value left them out (";;" adds them). */
static void lua_path(char *out, size_t len, const char *ours, const char *name)
{
    char versioned[32];
    snprintf(versioned, sizeof versioned, "%s_5_4", name);
    const char *user = getenv(versioned);
    if (!user)
        user = getenv(name);
    if (!user || !*user)
        snprintf(out, len, "%s;;", ours);
    else
        snprintf(out, len, "%s;%s", ours, user);
}

/* Is busted (a name on PATH, or a path) runnable? */
static int find_busted(const char *busted)
{
    if (strchr(busted, '/'))
        return access(busted, X_OK) == 0;
    const char *path = getenv("PATH");
    char probe[PATH_MAX];
    while (path && *path) {
        size_t n = strcspn(path, ":");
        snprintf(probe, sizeof probe, "%.*s/%s", (int)n, n ? path : ".",
                 busted);
        if (access(probe, X_OK) == 0)
            return 1;
        path += n + (path[n] == ':');
    }
    return 0;
}

int evl_cli_test(int argc, char **argv)
{
    static char cmod[PATH_MAX], lmod[PATH_MAX], tried[4 * PATH_MAX];
    static char ours[2 * PATH_MAX + 64], lpath[8 * PATH_MAX],
        cpath[8 * PATH_MAX];
    char exe[PATH_MAX];
    int paths = 0;

    if (argc > 1 &&
        (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        fputs(test_usage, stdout);
        return EVL_EXIT_OK;
    }
    if (argc > 1 && strcmp(argv[1], "--paths") == 0) {
        if (argc > 2) {
            fprintf(stderr, "evlua test: --paths takes no arguments\n");
            evl_cli_usage_error(test_usage);
            return EVL_EXIT_USAGE;
        }
        paths = 1;
    }

    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        fprintf(stderr, "evlua test: cannot find the evlua binary: %s\n",
                strerror(errno));
        return EVL_EXIT_USAGE;
    }
    exe[n] = '\0';
    if (find_modules(exe, cmod, lmod, sizeof cmod, tried, sizeof tried) != 0) {
        fprintf(stderr,
                "evlua test: cannot find evlua's Lua modules for %s; looked "
                "for %s\n",
                exe, tried);
        return EVL_EXIT_USAGE;
    }
    snprintf(ours, sizeof ours, "%s/?.lua;%s/?/init.lua", lmod, lmod);
    lua_path(lpath, sizeof lpath, ours, "LUA_PATH");
    snprintf(ours, sizeof ours, "%s/?.so", cmod);
    lua_path(cpath, sizeof cpath, ours, "LUA_CPATH");
    if (paths) {
        /* single quotes: the paths hold ';' and '?' */
        printf("export LUA_PATH_5_4='%s'\nexport LUA_CPATH_5_4='%s'\n", lpath,
               cpath);
        return EVL_EXIT_OK;
    }

    /* DIR or FILE first (anything not an option), else ./spec or .busted;
     * a later operand that exists (busted -o TAP DIR) counts as the
     * user's choice too */
    if (argc > 1 && argv[1][0] != '-') {
        if (!exists(argv[1])) {
            fprintf(stderr, "evlua test: %s: %s\n", argv[1], strerror(errno));
            return EVL_EXIT_USAGE;
        }
    } else {
        int chosen = 0;
        for (int i = 1; i < argc; i++)
            if (argv[i][0] != '-' && exists(argv[i]))
                chosen = 1;
        struct stat st;
        if (!chosen && !exists(".busted") &&
            !(stat("spec", &st) == 0 && S_ISDIR(st.st_mode))) {
            fprintf(stderr,
                    "evlua test: no spec directory here (./spec) and no "
                    ".busted: give DIR, or run it from the project's root\n");
            return EVL_EXIT_USAGE;
        }
    }

    const char *busted = getenv("EVLUA_BUSTED");
    if (!busted || !*busted)
        busted = "busted";
    if (!find_busted(busted)) {
        fprintf(stderr,
                "evlua test: cannot run busted ('%s'): install busted for Lua "
                "5.4 (Debian: lua-busted), or set EVLUA_BUSTED\n",
                busted);
        return EVL_EXIT_USAGE;
    }
    if (setenv("LUA_PATH_5_4", lpath, 1) != 0 ||
        setenv("LUA_CPATH_5_4", cpath, 1) != 0) {
        fprintf(stderr, "evlua test: setenv: %s\n", strerror(errno));
        return EVL_EXIT_USAGE;
    }

    /* busted [DIR] ARGS...: argv[0] ("test") becomes busted's name */
    char **args = calloc((size_t)argc + 1, sizeof *args);
    if (!args)
        abort();
    args[0] = (char *)busted;
    for (int i = 1; i < argc; i++)
        args[i] = argv[i];
    fflush(NULL);
    execvp(busted, args);
    fprintf(stderr, "evlua test: cannot run %s: %s\n", busted, strerror(errno));
    free(args);
    return EVL_EXIT_USAGE;
}
