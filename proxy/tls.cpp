#include "proxy/tls.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <stdexcept>

#include "protocol/scram.h"

namespace pghandoff::proxy {

namespace {
std::vector<std::uint8_t> certDer(X509* cert) {
  if (cert == nullptr) return {};
  int len = i2d_X509(cert, nullptr);
  if (len <= 0) return {};
  std::vector<std::uint8_t> der(static_cast<std::size_t>(len));
  unsigned char* p = der.data();
  i2d_X509(cert, &p);
  return der;
}
}  // namespace

ServerTls makeServerTls(const std::string& certFile, const std::string& keyFile) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                   ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                   ssl::context::single_dh_use);
  error_code ec;
  ctx->use_certificate_chain_file(certFile, ec);
  if (ec) {
    throw std::runtime_error("client_tls.cert: cannot load certificate '" + certFile +
                             "': " + ec.message());
  }
  ctx->use_private_key_file(keyFile, ssl::context::pem, ec);
  if (ec) {
    throw std::runtime_error("client_tls.key: cannot load private key '" + keyFile +
                             "': " + ec.message());
  }
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    throw std::runtime_error("client_tls.key does not match client_tls.cert");
  }
  ServerTls out;
  out.context = ctx;
  auto der = certDer(SSL_CTX_get0_certificate(ctx->native_handle()));
  if (auto ep = protocol::tlsServerEndPoint(der)) out.endPoint = std::move(*ep);
  return out;
}

std::shared_ptr<ssl::context> makeUpstreamTls(const config::ConnInfo& info) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                   ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  using config::SslMode;
  bool verify = info.sslmode == SslMode::kVerifyCa || info.sslmode == SslMode::kVerifyFull ||
                (info.sslmode == SslMode::kRequire && !info.sslrootcert.empty());
  if (verify) {
    if (info.sslrootcert.empty()) {
      throw std::runtime_error(
          "sslmode verify-ca/verify-full needs sslrootcert in the connection URL");
    }
    error_code ec;
    ctx->load_verify_file(info.sslrootcert, ec);
    if (ec) {
      throw std::runtime_error("cannot load sslrootcert '" + info.sslrootcert +
                               "': " + ec.message());
    }
    ctx->set_verify_mode(ssl::verify_peer);
  } else {
    ctx->set_verify_mode(ssl::verify_none);
  }
  if (!info.sslcert.empty()) {
    error_code ec;
    ctx->use_certificate_chain_file(info.sslcert, ec);
    if (!ec) ctx->use_private_key_file(info.sslkey, ssl::context::pem, ec);
    if (ec) throw std::runtime_error("cannot load sslcert/sslkey: " + ec.message());
  }
  return ctx;
}

std::shared_ptr<ssl::context> makePlainContext() {
  return std::make_shared<ssl::context>(ssl::context::tls_server);
}

void prepareUpstreamStream(ssl::stream<tcp::socket>& s, const config::ConnInfo& info) {
  // SNI only for names, as libpq does (RFC 6066 forbids literal addresses).
  error_code ec;
  asio::ip::make_address(info.host, ec);
  if (ec) SSL_set_tlsext_host_name(s.native_handle(), info.host.c_str());
  if (info.sslmode == config::SslMode::kVerifyFull) {
    s.set_verify_callback(ssl::host_name_verification(info.host));
  }
}

std::vector<std::uint8_t> peerCertificateDer(ssl::stream<tcp::socket>& s) {
  X509* cert = SSL_get1_peer_certificate(s.native_handle());
  auto der = certDer(cert);
  X509_free(cert);
  return der;
}

}  // namespace pghandoff::proxy
