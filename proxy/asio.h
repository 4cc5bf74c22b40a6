// The Asio vocabulary used across proxy/: coroutines, errors as values.
#pragma once

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ssl.hpp>

// Every translation unit must see the same reactor: the one with pghandoff's
// short-read patch (cmake/AsioShortReadPatch.cmake, third_party/boost-asio).
#if defined(__linux__) && !defined(PGHANDOFF_ASIO_SHORT_READ_PATCH)
#error \
    "Boost.Asio without pghandoff's short-read patch: build through CMake (include(AsioShortReadPatch))"
#endif

namespace pghandoff::proxy {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using boost::system::error_code;

template <typename T = void>
using awaitable = asio::awaitable<T>;

// Errors as values: `auto [ec, n] = co_await sock.async_read_some(buf, kUseAwaitable);`
inline constexpr auto kUseAwaitable = asio::as_tuple(asio::use_awaitable);

}  // namespace pghandoff::proxy
