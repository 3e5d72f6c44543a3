# The projection side's tests (issue 5). Included by tests/CMakeLists.txt.
# Each runs against the real broker and the real PostgreSQL started by the
# fixtures, in its own schema, topics and consumer groups.
evl_c_test(pg LABELS pg FIXTURES pg)
evl_c_test(projector_e2e LABELS pg kafka FIXTURES pg kafka)
evl_c_test(projector_poison LABELS pg kafka FIXTURES pg kafka)
evl_c_test(projector_replay LABELS pg kafka FIXTURES pg kafka)
evl_c_test(projector_unicode LABELS pg kafka FIXTURES pg kafka)
evl_c_test(projector_batchbytes LABELS pg kafka FIXTURES pg kafka)
# runs its own PostgreSQL cluster (so restarting it disturbs nobody)
evl_c_test(projector_pgrestart LABELS pg kafka FIXTURES pg kafka)
target_link_libraries(test_projector_pgrestart PRIVATE Threads::Threads)
# kill -9 ten times during 20,000 events (about a minute)
evl_c_test(projector_kill LABELS pg kafka slow FIXTURES pg kafka)
target_link_libraries(test_projector_kill PRIVATE Threads::Threads)
# three instances, one killed, one frozen past its session (about a minute)
evl_c_test(projector_scale LABELS pg kafka slow FIXTURES pg kafka)
target_link_libraries(test_projector_scale PRIVATE Threads::Threads)

# the benchmark (figures: scripts/bench-proj); a short run keeps it working
add_executable(bench_proj bench/bench_proj.c)
target_link_libraries(bench_proj PRIVATE evlua_harness)
target_include_directories(bench_proj PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/c)
add_test(NAME bench.proj COMMAND bench_proj 3000 100 2000)
set_tests_properties(bench.proj PROPERTIES LABELS "pg;kafka;bench"
  ENVIRONMENT "${EVLUA_TEST_ENV};EVLUA_BENCH_REPEAT=1"
  FIXTURES_REQUIRED "pg;kafka" TIMEOUT 300)
evl_c_test(projector_halt LABELS pg kafka FIXTURES pg kafka)
evl_c_test(projector_reset LABELS pg kafka FIXTURES pg kafka)
# issue 21: lag over every partition, whatever the assignment; readiness
evl_c_test(lag LABELS pg kafka FIXTURES pg kafka)
evl_c_test(lag_standby LABELS pg kafka FIXTURES pg kafka)

# RSS over a projection's catch-up, with and without giving memory back
# (figures: docs/projection-side.md); a short run keeps it working
add_executable(bench_proj_mem bench/bench_proj_mem.c)
target_link_libraries(bench_proj_mem PRIVATE evlua_harness Threads::Threads)
target_include_directories(bench_proj_mem PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/c)
add_test(NAME bench.proj_mem COMMAND bench_proj_mem 2000 100 1)
set_tests_properties(bench.proj_mem PROPERTIES LABELS "pg;kafka;bench"
  ENVIRONMENT "${EVLUA_TEST_ENV}"
  FIXTURES_REQUIRED "pg;kafka" TIMEOUT 300)
