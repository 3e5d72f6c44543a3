# The projection side (issue 5): events -> Lua projections -> PostgreSQL.
# Included by the top CMakeLists.txt after EVLUA_CORE_SOURCES and
# EVLUA_CLI_SOURCES are set.
list(APPEND EVLUA_CORE_SOURCES core/pg.c core/projector.c core/parked.c
  core/lag.c) # lag.c: both sides' lag; needs pg.c and cmd.cmake's kafka.c
list(APPEND EVLUA_CLI_SOURCES core/cli_parked.c)
add_compile_definitions(EVLUA_HAVE_PROJECTOR)
