# Runs a libFuzzer binary for SECONDS over a fresh copy of CORPUS and, when given and
# present, FOUND (inputs long runs found; not generated, so kept apart from CORPUS, which
# fuzz_corpus_*_current compares with its generator) inside WORK, and fails
# on any crash, leak, sanitizer report, timeout or out-of-memory. A crashing input is
# left in WORK/artifacts/ for reproduction: ${FUZZER} WORK/artifacts/crash-...
# cmake -DFUZZER=... -DCORPUS=... [-DFOUND=...] -DWORK=... -DSECONDS=... -P run_fuzz.cmake
foreach(var FUZZER CORPUS WORK SECONDS)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_fuzz.cmake: -D${var}=... is required")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK}/corpus ${WORK}/artifacts)
file(GLOB seeds ${CORPUS}/*)
if(NOT seeds)
  message(FATAL_ERROR "run_fuzz.cmake: no seed files in ${CORPUS}")
endif()
file(COPY ${seeds} DESTINATION ${WORK}/corpus)
if(DEFINED FOUND AND IS_DIRECTORY ${FOUND})
  file(GLOB found ${FOUND}/*)
  if(found)
    file(COPY ${found} DESTINATION ${WORK}/corpus)
  endif()
endif()
execute_process(COMMAND ${FUZZER} -max_total_time=${SECONDS} -rss_limit_mb=1024 -timeout=10
                        -print_final_stats=1 -artifact_prefix=${WORK}/artifacts/
                        ${WORK}/corpus
                RESULT_VARIABLE rc)
file(GLOB findings ${WORK}/artifacts/*)
if(NOT rc EQUAL 0 OR findings)
  message(FATAL_ERROR "fuzzer failed (exit ${rc}); inputs: ${findings}")
endif()
