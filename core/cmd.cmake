# The command side (issue "Command side"): commands -> Lua aggregates ->
# events in one Kafka transaction per batch. Included by the top
# CMakeLists.txt after EVLUA_CORE_SOURCES and EVLUA_CLI_SOURCES are set.
list(APPEND EVLUA_CORE_SOURCES
  core/kafka.c
  core/store.c
  core/cmdproc.c
)
list(APPEND EVLUA_CLI_SOURCES core/cli_send.c)
add_compile_definitions(EVLUA_HAVE_CMDPROC)
