# The command side's tests (included by tests/CMakeLists.txt).
#   unit:  envelope, store, kafka helpers (no services)
#   kafka: against the real broker started by the `kafka` fixture; each
#          test names its topics, group and transactional ids uniquely
#   slow:  the kill -9 chaos run, the scale-out run, the network partition
evl_c_test(envelope LABELS unit)
evl_c_test(store LABELS unit)
evl_c_test(kafka_util LABELS unit)

foreach(t cmd_e2e cmd_bad cmd_abort cmd_pipeline cmd_restart cmd_fence)
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/c/test_${t}.c)
    evl_c_test(${t} LABELS kafka FIXTURES kafka)
    add_dependencies(test_${t} evlua)
  endif()
endforeach()
foreach(t cmd_chaos cmd_scale cmd_takeover)
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/c/test_${t}.c)
    evl_c_test(${t} LABELS kafka slow FIXTURES kafka)
    add_dependencies(test_${t} evlua)
    set_tests_properties(${t} PROPERTIES TIMEOUT 900)
  endif()
endforeach()

# a network partition longer than transaction.timeout.ms (issue 21): the
# test starts its own broker on the host side of a veth pair and runs evlua
# in a network namespace, so it needs root (it fails without), not the
# shared broker
if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/c/test_cmd_partition.c)
  evl_c_test(cmd_partition LABELS kafka slow)
  add_dependencies(test_cmd_partition evlua)
  set_tests_properties(cmd_partition PROPERTIES TIMEOUT 600)
endif()

# benchmark: tests/bench/bench_cmd.c, figures from scripts/bench-cmd
if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_cmd.c)
  add_executable(bench_cmd bench/bench_cmd.c)
  target_link_libraries(bench_cmd PRIVATE evlua_harness)
  target_include_directories(bench_cmd PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/c)
endif()
