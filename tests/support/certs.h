#pragma once

// Test PKI made with the openssl CLI: a CA, a server certificate it signs
// (CN and subjectAltName DNS:localhost, IP:127.0.0.1) and a client
// certificate; plus a self-signed "wrong" certificate for negative tests.
// Keys are ECDSA P-256 (fast to generate), mode 0600, and owned by the
// `postgres` OS user when we are root, because PostgreSQL refuses a key that
// is not owned by its server user (or root) or is group/world readable.

#include <string>

namespace pghandoff::test {

struct TestCerts {
  std::string dir;
  std::string caCert;      // <dir>/ca.crt
  std::string caKey;       // <dir>/ca.key
  std::string serverCert;  // <dir>/server.crt
  std::string serverKey;   // <dir>/server.key
  std::string clientCert;  // <dir>/client.crt (CN=app, signed by the CA)
  std::string clientKey;   // <dir>/client.key
};

// dir empty: a fresh mkdtemp directory under /tmp, removed when the test
// binary exits. An existing dir is used as is (made world-traversable).
// Throws std::runtime_error with openssl's stderr on failure.
TestCerts makeTestCerts(std::string dir = {}, std::string cn = "localhost");

struct CertPair {
  std::string cert;
  std::string key;
};

// A self-signed certificate (not issued by any test CA) with the same CN/SAN
// shape as the server certificate: <dir>/selfsigned-<cn>.crt / .key.
CertPair makeSelfSignedCert(const std::string& dir, const std::string& cn = "localhost");

}  // namespace pghandoff::test
