# One lincheck test: optionally generate FILE with GEN GEN_ARGS, run lincheck FILE ARGS,
# require exit code EXIT and a report (stdout and stderr) matching EXPECT. GEN_ARGS and
# ARGS are space-separated.
separate_arguments(gen_args UNIX_COMMAND "${GEN_ARGS}")
separate_arguments(args UNIX_COMMAND "${ARGS}")
if(DEFINED GEN)
  execute_process(COMMAND ${GEN} ${gen_args} OUTPUT_FILE ${FILE} RESULT_VARIABLE grc)
  if(NOT grc EQUAL 0)
    message(FATAL_ERROR "generator failed: ${grc}")
  endif()
endif()
execute_process(COMMAND ${LINCHECK} ${FILE} ${args}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT "${rc}" STREQUAL "${EXIT}")
  message(FATAL_ERROR "lincheck exited ${rc}, expected ${EXIT}")
endif()
if(NOT "${out}${err}" MATCHES "${EXPECT}")
  message(FATAL_ERROR "the report does not match: ${EXPECT}")
endif()
