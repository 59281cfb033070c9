# Regenerates the seed corpus with GEN into WORK and fails unless it matches the committed
# CORPUS file for file: an encoder change that alters wire bytes shows up here (then
# regenerate: fuzz_gen_corpus tests/fuzz/corpus/frame, and update docs/protocol.md).
# cmake -DGEN=... -DCORPUS=... -DWORK=... -P check_corpus.cmake
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
execute_process(COMMAND ${GEN} ${WORK} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${GEN} failed (exit ${rc})")
endif()
file(GLOB want RELATIVE ${WORK} ${WORK}/*)
file(GLOB have RELATIVE ${CORPUS} ${CORPUS}/*)
list(SORT want)
list(SORT have)
if(NOT want STREQUAL have)
  message(FATAL_ERROR "corpus files differ: generated [${want}], committed [${have}]")
endif()
foreach(f ${want})
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK}/${f} ${CORPUS}/${f}
                  RESULT_VARIABLE diff)
  if(NOT diff EQUAL 0)
    message(FATAL_ERROR "${CORPUS}/${f} is not what the encoders produce now")
  endif()
endforeach()
message(STATUS "seed corpus matches the encoders (${want})")
