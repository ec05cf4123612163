# Fails when a file includes a header it must not depend on.
#   cmake -DSCAN_DIR=dir | -DSCAN_FILES="a.c;b.h"  [-DFORBIDDEN_DIR=dir] [-DFORBIDDEN_NAMES="a.h;b.h"]
#         [-DSTAMP=file] -P check_includes.cmake
# Scanned: every .c and .h under SCAN_DIR, or SCAN_FILES. Forbidden: every header under
# FORBIDDEN_DIR (by file name, as #include "name.h" finds it through an include path, and any
# path through handlers/) and FORBIDDEN_NAMES. rpc/ runs it against handlers/ so that the RPC
# layer stays independent of the application; handlers/ runs it so that its shared layer (app,
# settings, limits, mail, realtime, tokens) includes no service's header.
cmake_minimum_required(VERSION 3.18)
if(NOT SCAN_DIR AND NOT SCAN_FILES)
  message(FATAL_ERROR "check_includes: SCAN_DIR or SCAN_FILES is required")
endif()
set(forbidden ${FORBIDDEN_NAMES})
set(forbidden_headers "")
if(FORBIDDEN_DIR)
  file(GLOB_RECURSE forbidden_headers RELATIVE ${FORBIDDEN_DIR} ${FORBIDDEN_DIR}/*.h)
endif()
foreach(h IN LISTS forbidden_headers)
  get_filename_component(name ${h} NAME)
  list(APPEND forbidden ${name})
endforeach()
if(SCAN_DIR)
  file(GLOB_RECURSE sources ${SCAN_DIR}/*.c ${SCAN_DIR}/*.h)
else()
  set(sources ${SCAN_FILES})
endif()
set(bad "")
foreach(src IN LISTS sources)
  file(STRINGS ${src} includes REGEX "^[ \t]*#[ \t]*include[ \t]*[\"<]")
  foreach(line IN LISTS includes)
    string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*[\"<]([^\">]+)[\">].*" "\\1" inc "${line}")
    get_filename_component(inc_name "${inc}" NAME)
    if(inc_name IN_LIST forbidden OR (FORBIDDEN_DIR AND inc MATCHES "(^|/)handlers/"))
      string(APPEND bad "\n  ${src}: ${line}")
    endif()
  endforeach()
endforeach()
if(bad)
  message(FATAL_ERROR "includes of forbidden headers (those of ${FORBIDDEN_DIR} ${FORBIDDEN_NAMES}):${bad}")
endif()
if(STAMP)
  file(TOUCH ${STAMP})
endif()
