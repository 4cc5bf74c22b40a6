#include "config/conninfo.h"

#include <gtest/gtest.h>

#include <string>

namespace pghandoff::config {
namespace {

ConnInfo mustParse(std::string_view s) {
  ConnInfoResult r = parseConnInfo(s);
  EXPECT_TRUE(r.info.has_value()) << s << " -> " << r.error;
  return r.info.value_or(ConnInfo{});
}

TEST(ConnInfoUrl, FullUrl) {
  ConnInfo c = mustParse(
      "postgresql://app:s3cret@db.example.com:6543/appdb?sslmode=verify-full&application_name=pgh"
      "&connect_timeout=7&sslrootcert=/etc/ca.pem&options=-c%20statement_timeout%3D5s");
  EXPECT_EQ(c.host, "db.example.com");
  EXPECT_EQ(c.port, 6543);
  EXPECT_EQ(c.user, "app");
  EXPECT_EQ(c.password, "s3cret");
  EXPECT_EQ(c.dbname, "appdb");
  EXPECT_EQ(c.sslmode, SslMode::kVerifyFull);
  EXPECT_EQ(c.applicationName, "pgh");
  EXPECT_EQ(c.connectTimeout, std::chrono::milliseconds(7000));
  EXPECT_EQ(c.sslrootcert, "/etc/ca.pem");
  EXPECT_EQ(c.options, "-c statement_timeout=5s");
}

TEST(ConnInfoUrl, PostgresSchemeAndDefaults) {
  ConnInfo c = mustParse("postgres://");
  EXPECT_EQ(c, ConnInfo{});
  ConnInfo d = mustParse("postgres://bob@host");
  EXPECT_EQ(d.host, "host");
  EXPECT_EQ(d.port, 5432);
  EXPECT_EQ(d.user, "bob");
  EXPECT_EQ(d.password, "");
  EXPECT_EQ(d.dbname, "bob");  // libpq: dbname defaults to the user name
  EXPECT_EQ(d.sslmode, SslMode::kPrefer);
}

TEST(ConnInfoUrl, PercentDecoding) {
  ConnInfo c = mustParse("postgres://us%40er:p%3Aa%2Fss%25@h/my%20db");
  EXPECT_EQ(c.user, "us@er");
  EXPECT_EQ(c.password, "p:a/ss%");
  EXPECT_EQ(c.dbname, "my db");
}

TEST(ConnInfoUrl, RawAtInPasswordSplitsAtLastAt) {
  ConnInfo c = mustParse("postgres://u:p@ss@host:5433/db");
  EXPECT_EQ(c.password, "p@ss");
  EXPECT_EQ(c.host, "host");
  EXPECT_EQ(c.port, 5433);
}

TEST(ConnInfoUrl, Ipv6Hosts) {
  ConnInfo c = mustParse("postgresql://u@[::1]:5433/db");
  EXPECT_EQ(c.host, "::1");
  EXPECT_EQ(c.port, 5433);
  ConnInfo d = mustParse("postgresql://[2001:db8::7]/db");
  EXPECT_EQ(d.host, "2001:db8::7");
  EXPECT_EQ(d.port, 5432);
}

TEST(ConnInfoUrl, QueryParamsOverrideAndSslTrue) {
  ConnInfo c = mustParse(
      "postgres://h/db?host=other&port=7000&user=x&password=y&ssl=true&sslcert=c&sslkey=k");
  EXPECT_EQ(c.host, "other");
  EXPECT_EQ(c.port, 7000);
  EXPECT_EQ(c.user, "x");
  EXPECT_EQ(c.password, "y");
  EXPECT_EQ(c.sslmode, SslMode::kRequire);
  EXPECT_EQ(c.sslcert, "c");
  EXPECT_EQ(c.sslkey, "k");
}

TEST(ConnInfoUrl, AllSslModes) {
  const std::pair<const char*, SslMode> cases[] = {
      {"disable", SslMode::kDisable},    {"allow", SslMode::kAllow},
      {"prefer", SslMode::kPrefer},      {"require", SslMode::kRequire},
      {"verify-ca", SslMode::kVerifyCa}, {"verify-full", SslMode::kVerifyFull}};
  for (const auto& [name, mode] : cases) {
    EXPECT_EQ(mustParse(std::string("postgres://h/d?sslmode=") + name).sslmode, mode) << name;
    EXPECT_EQ(toString(mode), name);
  }
}

struct BadCase {
  const char* input;
  const char* error;
};

TEST(ConnInfoErrors, ExactMessages) {
  const BadCase cases[] = {
      {"postgres://h:0/db", "invalid port number (expected 1-65535)"},
      {"postgres://h:65536/db", "invalid port number (expected 1-65535)"},
      {"postgres://h:54x/db", "invalid port number (expected 1-65535)"},
      {"postgres://h/db?sslmode=verify",
       "invalid sslmode (expected disable|allow|prefer|require|verify-ca|verify-full)"},
      {"postgres://h/db?bogus=1", "unknown connection parameter \"bogus\""},
      {"postgres://h/db?connect_timeout=-1",
       "invalid connect_timeout (expected a whole number of seconds)"},
      {"postgres://h/db?sslmode", "query parameter without '=' in the URL"},
      {"postgres://h/d%zzb", "invalid percent-encoding in the database name"},
      {"postgres://h/d%00b", "invalid percent-encoding in the database name"},
      {"postgres://h1,h2/db", "multiple hosts are not supported"},
      {"postgres://[::1/db", "missing ']' after an IPv6 host"},
      {"postgres://::1/db", "an IPv6 host must be enclosed in []"},
      {"postgres://h/db?ssl=false", "invalid ssl parameter (only ssl=true is accepted)"},
      {"mysql://h/db", "unsupported URL scheme (expected postgres:// or postgresql://)"},
      {"host=h port", "missing '=' after a keyword in the connection string"},
      {"host=h password='abc", "unterminated quoted value in the connection string"},
      {"host=h hostaddr=1.2.3.4", "unknown connection parameter \"hostaddr\""},
  };
  for (const auto& c : cases) {
    ConnInfoResult r = parseConnInfo(c.input);
    EXPECT_FALSE(r.info.has_value()) << c.input;
    EXPECT_EQ(r.error, c.error) << c.input;
  }
}

// A password must never reach an error message, even when the string is so
// malformed that the password lands where a host or port is expected.
TEST(ConnInfoErrors, NeverEchoThePassword) {
  const char* inputs[] = {
      "postgres://user:Hunter2Secret@host:badport/db",
      "postgres://user:Hunter2Secret/db",  // no '@': "Hunter2Secret" parses as a port
      "postgres://user:Hunter2Secret@h/db?x%zz=1",
      "postgres://user:Hunter2Secret%zz@h/db",
      "postgres://user:Hunter2Secret@h/db?Hunter2Secret=1",
      "host=h password=Hunter2Secret port=x",
      "host=h password='Hunter2Secret",
      "host=h Hunter2Secret",
      "Hunter2Secret",
  };
  for (const char* in : inputs) {
    ConnInfoResult r = parseConnInfo(in);
    ASSERT_FALSE(r.info.has_value()) << in;
    EXPECT_FALSE(r.error.empty()) << in;
    EXPECT_EQ(r.error.find("Hunter2"), std::string::npos) << r.error;
    EXPECT_EQ(redactUrl(in), "<unparseable connection string>");
  }
}

TEST(ConnInfoKeywordValue, QuotingAndEscapes) {
  ConnInfo c = mustParse(
      "host=db.local port = 6000 user=app password='it\\'s a \\\\secret' dbname='my db' "
      "sslmode=require application_name=x\\ y connect_timeout=3 options='-c search_path=s'");
  EXPECT_EQ(c.host, "db.local");
  EXPECT_EQ(c.port, 6000);
  EXPECT_EQ(c.user, "app");
  EXPECT_EQ(c.password, "it's a \\secret");
  EXPECT_EQ(c.dbname, "my db");
  EXPECT_EQ(c.sslmode, SslMode::kRequire);
  EXPECT_EQ(c.applicationName, "x y");
  EXPECT_EQ(c.connectTimeout, std::chrono::milliseconds(3000));
  EXPECT_EQ(c.options, "-c search_path=s");
}

TEST(ConnInfoKeywordValue, EmptyStringIsAllDefaults) {
  EXPECT_EQ(mustParse(""), ConnInfo{});
  EXPECT_EQ(mustParse("   "), ConnInfo{});
  EXPECT_EQ(mustParse("user=u").dbname, "u");
  EXPECT_EQ(mustParse("user=u dbname=d").dbname, "d");
}

TEST(ConnInfoRedact, UrlForms) {
  EXPECT_EQ(redactUrl("postgres://app:s3cret@db:5432/app?sslmode=require"),
            "postgres://app:****@db:5432/app?sslmode=require");
  EXPECT_EQ(redactUrl("postgresql://app:p%40ss@[::1]/app"), "postgresql://app:****@[::1]/app");
  EXPECT_EQ(redactUrl("postgres://app:p@ss@db/app"), "postgres://app:****@db/app");
  EXPECT_EQ(redactUrl("postgres://app@db/app"), "postgres://app@db/app");
  EXPECT_EQ(redactUrl("postgres://app:@db/app"), "postgres://app:@db/app");
  EXPECT_EQ(redactUrl("postgres://app:one@db/app?password=two&sslmode=disable"),
            "postgres://app:****@db/app?password=****&sslmode=disable");
}

TEST(ConnInfoRedact, KeywordValueForms) {
  EXPECT_EQ(redactUrl("host=db password=s3cret user=app"), "host=db password=**** user=app");
  EXPECT_EQ(redactUrl("host=db password = 'a b\\' c' user=app"),
            "host=db password = **** user=app");
  EXPECT_EQ(redactUrl("host=db user=app"), "host=db user=app");
}

TEST(ConnInfoDescribe, NoPassword) {
  ConnInfo c = mustParse("postgres://app:s3cret@db.example.com:6543/appdb?sslmode=verify-full");
  EXPECT_EQ(describe(c), "db.example.com:6543/appdb user=app sslmode=verify-full");
  ConnInfo d = mustParse("postgres://app:s3cret@[::1]/x");
  EXPECT_EQ(describe(d), "[::1]:5432/x user=app sslmode=prefer");
}

}  // namespace
}  // namespace pghandoff::config
