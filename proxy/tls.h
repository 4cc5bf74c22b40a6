// TLS contexts: the proxy's server side toward applications (client_tls) and
// its client side toward each PostgreSQL server (the URL's sslmode).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "config/conninfo.h"
#include "proxy/asio.h"

namespace pghandoff::proxy {

struct ServerTls {
  std::shared_ptr<ssl::context> context;
  // RFC 5929 tls-server-end-point of our certificate, for SCRAM-SHA-256-PLUS.
  std::vector<std::uint8_t> endPoint;
};

// Throws std::runtime_error naming the file when the certificate or key
// cannot be loaded. TLS 1.2 is the floor.
[[nodiscard]] ServerTls makeServerTls(const std::string& certFile, const std::string& keyFile);

// The context for connecting to a server with the given sslmode. verify-ca
// and verify-full need sslrootcert; require with an sslrootcert verifies the
// chain as libpq does. Hostname checks happen per connection (verifyHost).
[[nodiscard]] std::shared_ptr<ssl::context> makeUpstreamTls(const config::ConnInfo& info);

// A context for streams that stay plain.
[[nodiscard]] std::shared_ptr<ssl::context> makePlainContext();

// Sets SNI and, for verify-full, hostname verification on one connection.
void prepareUpstreamStream(ssl::stream<tcp::socket>& s, const config::ConnInfo& info);

// DER of the peer's certificate (for channel binding), empty if none.
[[nodiscard]] std::vector<std::uint8_t> peerCertificateDer(ssl::stream<tcp::socket>& s);

}  // namespace pghandoff::proxy
