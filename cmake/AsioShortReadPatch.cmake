# Boost.Asio with pghandoff's short-read patch (third_party/boost-asio/README.md).
#
# Three Asio headers are copied from the system's Boost 1.81 into the build
# tree, the patch is applied to the copies, and that directory is put ahead of
# the system include path for every target of the project, so that every
# translation unit sees the same (patched) reactor. The system's Boost is not
# touched. A patch that does not apply (another Boost release) stops the
# configure step with a message instead of building an unpatched proxy.

find_path(PGHANDOFF_ASIO_INCLUDE_DIR boost/asio/detail/impl/epoll_reactor.ipp
          HINTS ${Boost_INCLUDE_DIRS} REQUIRED)
find_program(PGHANDOFF_PATCH_EXECUTABLE patch REQUIRED)

set(_patch ${PROJECT_SOURCE_DIR}/third_party/boost-asio/short-read-exhausts.patch)
set(_out ${PROJECT_BINARY_DIR}/asio-patched)
set(_files
    boost/asio/detail/epoll_reactor.hpp
    boost/asio/detail/impl/epoll_reactor.ipp
    boost/asio/detail/reactive_socket_recv_op.hpp)

# Patched in a staging directory, then copied over only where the result
# differs: a re-run of the configure step (scripts/build.sh runs one every
# time) must not touch the headers' timestamps and rebuild every Asio user.
set(_stage ${PROJECT_BINARY_DIR}/asio-patched.stage)
file(REMOVE_RECURSE ${_stage})
foreach(f ${_files})
  get_filename_component(dir ${f} DIRECTORY)
  file(COPY ${PGHANDOFF_ASIO_INCLUDE_DIR}/${f} DESTINATION ${_stage}/${dir})
endforeach()
execute_process(
  COMMAND ${PGHANDOFF_PATCH_EXECUTABLE} -p1 --forward --batch --silent -i ${_patch}
  WORKING_DIRECTORY ${_stage}
  RESULT_VARIABLE _rc
  OUTPUT_VARIABLE _log
  ERROR_VARIABLE _log)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "third_party/boost-asio/short-read-exhausts.patch does not apply to the "
                      "Asio headers in ${PGHANDOFF_ASIO_INCLUDE_DIR} (Boost ${Boost_VERSION}; "
                      "the patch is written for 1.81):\n${_log}")
endif()
foreach(f ${_files})
  get_filename_component(dir ${f} DIRECTORY)
  file(MAKE_DIRECTORY ${_out}/${dir})
  file(COPY_FILE ${_stage}/${f} ${_out}/${f} ONLY_IF_DIFFERENT)
endforeach()
file(REMOVE_RECURSE ${_stage})
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_patch})
foreach(f ${_files})
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${PGHANDOFF_ASIO_INCLUDE_DIR}/${f})
endforeach()

# -isystem: searched before the default /usr/include, after the project's -I.
include_directories(BEFORE SYSTEM ${_out})
