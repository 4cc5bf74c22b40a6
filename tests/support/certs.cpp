#include "tests/support/certs.h"

#include <sys/stat.h>
#include <unistd.h>

#include <stdexcept>
#include <vector>

#include "tests/support/process.h"

namespace pghandoff::test {
namespace {

constexpr const char* kPostgresUser = "postgres";

void openssl(const std::vector<std::string>& args) {
  std::vector<std::string> argv{"openssl"};
  argv.insert(argv.end(), args.begin(), args.end());
  // OPENSSL_CONF pointing nowhere would break `req`; keep the system config.
  const ProcessResult r = run(argv, {}, 30s);
  if (r.exitCode != 0) {
    throw std::runtime_error("openssl " + args.at(0) + " failed (exit " +
                             std::to_string(r.exitCode) + "): " + r.err);
  }
}

void newKey(const std::string& keyFile) {
  openssl({"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", keyFile});
  ::chmod(keyFile.c_str(), 0600);
  chownToUser(keyFile, kPostgresUser);
}

std::string leafExtensions(const std::string& cn, bool server) {
  std::string ext =
      "basicConstraints=critical,CA:FALSE\n"
      "keyUsage=critical,digitalSignature,keyEncipherment\n";
  if (server) {
    ext += "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:" + cn + ",IP:127.0.0.1\n";
  } else {
    ext += "extendedKeyUsage=clientAuth\n";
  }
  return ext;
}

// A leaf key + certificate signed by the CA.
void issue(const TestCerts& ca, const std::string& key, const std::string& cert,
           const std::string& cn, bool server) {
  newKey(key);
  const std::string csr = cert + ".csr";
  const std::string ext = cert + ".ext";
  openssl({"req", "-new", "-key", key, "-subj", "/CN=" + cn, "-out", csr});
  writeFile(ext, leafExtensions(cn, server));
  openssl({"x509", "-req", "-in", csr, "-CA", ca.caCert, "-CAkey", ca.caKey, "-set_serial",
           "0x" + randomHex(16), "-days", "3650", "-sha256", "-extfile", ext, "-out", cert});
  ::chmod(cert.c_str(), 0644);
  ::unlink(csr.c_str());
  ::unlink(ext.c_str());
}

}  // namespace

TestCerts makeTestCerts(std::string dir, std::string cn) {
  if (dir.empty()) {
    dir = makeTempDir("pghandoff-certs", /*removeAtExit=*/true);
    markOwned(dir);
  }
  // mkdtemp makes 0700; the postgres user must reach the files.
  ::chmod(dir.c_str(), 0755);
  TestCerts c;
  c.dir = dir;
  c.caCert = dir + "/ca.crt";
  c.caKey = dir + "/ca.key";
  c.serverCert = dir + "/server.crt";
  c.serverKey = dir + "/server.key";
  c.clientCert = dir + "/client.crt";
  c.clientKey = dir + "/client.key";

  newKey(c.caKey);
  openssl({"req", "-x509", "-new", "-key", c.caKey, "-subj", "/CN=pghandoff test CA", "-days",
           "3650", "-sha256", "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
           "keyUsage=critical,keyCertSign,cRLSign", "-out", c.caCert});
  ::chmod(c.caCert.c_str(), 0644);
  issue(c, c.serverKey, c.serverCert, cn, /*server=*/true);
  issue(c, c.clientKey, c.clientCert, "app", /*server=*/false);
  return c;
}

CertPair makeSelfSignedCert(const std::string& dir, const std::string& cn) {
  CertPair p{dir + "/selfsigned-" + cn + ".crt", dir + "/selfsigned-" + cn + ".key"};
  newKey(p.key);
  openssl({"req", "-x509", "-new", "-key", p.key, "-subj", "/CN=" + cn, "-days", "3650", "-sha256",
           "-addext", "subjectAltName=DNS:" + cn + ",IP:127.0.0.1", "-out", p.cert});
  ::chmod(p.cert.c_str(), 0644);
  return p;
}

}  // namespace pghandoff::test
