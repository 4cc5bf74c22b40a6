// PostgreSQL JDBC workload for pghandoff integration tests.
//
// Build:  javac -cp /usr/share/java/postgresql.jar -d OUTDIR tests/clients/jdbc/PgHandoffJdbcClient.java
// Run:    java -cp OUTDIR:/usr/share/java/postgresql.jar PgHandoffJdbcClient JDBC_URL USER PASSWORD SCENARIO [PREFIX]
//
// Scenarios: basic, batch, prepared, transaction, metadata (or "all"). Prints one line per
// check ("ok   <check>" / "FAIL <check>: <why>"). Exit: 0 every check passed, 1 a check
// failed, 2 could not run (bad arguments, cannot connect, unexpected error), 3 watchdog fired
// (PGHANDOFF_CLIENT_TIMEOUT seconds, default 180). The URL and password are never printed.

import java.math.BigDecimal;
import java.security.MessageDigest;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.Date;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Timestamp;
import java.sql.Types;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Objects;
import java.util.Properties;
import java.util.TreeSet;

import org.postgresql.PGProperty;
import org.postgresql.PGStatement;

public final class PgHandoffJdbcClient {
  private static final List<String> SCENARIOS =
      Arrays.asList("basic", "batch", "prepared", "transaction", "metadata");

  /** A check failed in a way that makes the rest of the scenario meaningless. */
  private static final class CheckFailed extends Exception {
    private static final long serialVersionUID = 1L;

    CheckFailed(String name) {
      super(name);
    }
  }

  private static final class Checker {
    final String scenario;
    int passed;
    int failed;

    Checker(String scenario) {
      this.scenario = scenario;
    }

    boolean check(String name, boolean condition, String detail) {
      if (condition) {
        passed++;
        System.out.println("ok   " + scenario + ": " + name);
      } else {
        failed++;
        System.out.println("FAIL " + scenario + ": " + name
            + (detail == null || detail.isEmpty() ? "" : ": " + detail));
      }
      System.out.flush();
      return condition;
    }

    boolean equal(String name, Object got, Object want) {
      return check(name, Objects.deepEquals(got, want),
          "got " + show(got) + ", want " + show(want));
    }

    void require(String name, boolean condition, String detail) throws CheckFailed {
      if (!check(name, condition, detail)) {
        throw new CheckFailed(name);
      }
    }

    /** Runs the statement, which must fail with the given SQLSTATE. */
    SQLException expectError(String name, String sqlState, SqlAction action) {
      try {
        action.run();
        check(name, false, "no error raised, want SQLSTATE " + sqlState);
        return null;
      } catch (SQLException e) {
        check(name, sqlState.equals(e.getSQLState()),
            "got SQLSTATE " + e.getSQLState() + " (" + e.getMessage() + "), want " + sqlState);
        return e;
      }
    }
  }

  @FunctionalInterface
  private interface SqlAction {
    void run() throws SQLException;
  }

  private static String show(Object value) {
    String text;
    if (value instanceof byte[]) {
      text = "byte[" + ((byte[]) value).length + "]";
    } else if (value instanceof Object[]) {
      text = Arrays.deepToString((Object[]) value);
    } else if (value instanceof int[]) {
      text = Arrays.toString((int[]) value);
    } else {
      text = String.valueOf(value);
    }
    return text.length() > 300 ? text.substring(0, 300) + "... (" + text.length() + " chars)" : text;
  }

  private final String url;
  private final String user;
  private final String password;
  private final String prefix;

  private PgHandoffJdbcClient(String url, String user, String password, String prefix) {
    this.url = url;
    this.user = user;
    this.password = password;
    this.prefix = prefix;
  }

  private Connection connect(Properties extra) throws SQLException {
    Properties props = new Properties();
    props.setProperty("user", user);
    props.setProperty("password", password);
    // Defaults only: parameters in the caller's URL take precedence over these.
    PGProperty.CONNECT_TIMEOUT.set(props, 10);
    PGProperty.SOCKET_TIMEOUT.set(props, 120);
    PGProperty.APPLICATION_NAME.set(props, "pghandoff-jdbc-client");
    if (extra != null) {
      props.putAll(extra);
    }
    return DriverManager.getConnection(url, props);
  }

  private Connection connect() throws SQLException {
    return connect(null);
  }

  private void dropTables(List<String> tables) {
    if (tables.isEmpty()) {
      return;
    }
    try (Connection conn = connect(); Statement st = conn.createStatement()) {
      for (String table : tables) {
        st.execute("DROP TABLE IF EXISTS " + table);
      }
    } catch (SQLException e) {
      System.err.println("warning: could not drop tables " + tables + ": SQLSTATE "
          + e.getSQLState() + " " + e.getMessage());
    }
  }

  private static long queryLong(Connection conn, String sql) throws SQLException {
    try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
      rs.next();
      return rs.getLong(1);
    }
  }

  private static String md5Hex(byte[] data) {
    try {
      byte[] digest = MessageDigest.getInstance("MD5").digest(data);
      StringBuilder sb = new StringBuilder();
      for (byte b : digest) {
        sb.append(String.format("%02x", b & 0xff));
      }
      return sb.toString();
    } catch (java.security.NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
  }

  // ------------------------------------------------------------------------------- basic

  private void basic(Checker ck, List<String> tables) throws SQLException, CheckFailed {
    String table = prefix + "_basic";
    tables.add(table);
    try (Connection conn = connect(); Statement st = conn.createStatement()) {
      st.execute("DROP TABLE IF EXISTS " + table);
      st.execute("CREATE TABLE " + table + " (id int PRIMARY KEY, big bigint, name text,"
          + " flag boolean, amount numeric(14,4), ratio double precision, day date,"
          + " at timestamp, data bytea)");
      ck.check("create table", true, null);

      String text = "héllo wörld – Ελληνικά 日本語 🐘 'q' \"dq\" \\ \t end";
      byte[] blob = new byte[256 * 16];
      for (int i = 0; i < blob.length; i++) {
        blob[i] = (byte) i;
      }
      Timestamp at = Timestamp.valueOf("2024-02-29 12:34:56.789");
      try (PreparedStatement ps = conn.prepareStatement("INSERT INTO " + table
          + " (id, big, name, flag, amount, ratio, day, at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")) {
        ps.setInt(1, 1);
        ps.setLong(2, 9007199254740993L);
        ps.setString(3, text);
        ps.setBoolean(4, true);
        ps.setBigDecimal(5, new BigDecimal("12345.6789"));
        ps.setDouble(6, 0.1 + 0.2);
        ps.setDate(7, Date.valueOf("2024-02-29"));
        ps.setTimestamp(8, at);
        ps.setBytes(9, blob);
        ck.equal("insert with 9 parameters updates 1 row", ps.executeUpdate(), 1);
        ps.setInt(1, 2);
        ps.setNull(2, Types.BIGINT);
        ps.setNull(3, Types.VARCHAR);
        ps.setNull(4, Types.BOOLEAN);
        ps.setNull(5, Types.NUMERIC);
        ps.setNull(6, Types.DOUBLE);
        ps.setNull(7, Types.DATE);
        ps.setNull(8, Types.TIMESTAMP);
        ps.setNull(9, Types.BINARY);
        ck.equal("insert of NULLs updates 1 row", ps.executeUpdate(), 1);
      }

      try (PreparedStatement ps = conn.prepareStatement("SELECT id, big, name, flag, amount, ratio,"
          + " day, at, data, md5(data) FROM " + table + " WHERE id = ?")) {
        ps.setInt(1, 1);
        try (ResultSet rs = ps.executeQuery()) {
          ck.require("row 1 found", rs.next(), "no row");
          ck.equal("int", rs.getInt("id"), 1);
          ck.equal("bigint", rs.getLong("big"), 9007199254740993L);
          ck.equal("unicode text", rs.getString("name"), text);
          ck.equal("boolean", rs.getBoolean("flag"), true);
          ck.equal("numeric", rs.getBigDecimal("amount"), new BigDecimal("12345.6789"));
          ck.equal("double", rs.getDouble("ratio"), 0.1 + 0.2);
          ck.equal("date", rs.getDate("day"), Date.valueOf("2024-02-29"));
          ck.equal("timestamp", rs.getTimestamp("at"), at);
          ck.equal("bytea", rs.getBytes("data"), blob);
          ck.equal("bytea md5 on the server", rs.getString(10), md5Hex(blob));
          ResultSetMetaData md = rs.getMetaData();
          ck.equal("result column count and names",
              Arrays.asList(md.getColumnCount(), md.getColumnName(1), md.getColumnName(9)),
              Arrays.asList(10, "id", "data"));
          ck.equal("only one row", rs.next(), false);
        }
        ps.setInt(1, 2);
        try (ResultSet rs = ps.executeQuery()) {
          ck.require("row 2 found", rs.next(), "no row");
          List<Boolean> nulls = new ArrayList<>();
          for (int col = 2; col <= 9; col++) {
            nulls.add(rs.getObject(col) == null);
          }
          ck.equal("NULL parameters read back as NULL", nulls, Arrays.asList(
              true, true, true, true, true, true, true, true));
          rs.getLong("big");
          ck.equal("wasNull after NULL bigint", rs.wasNull(), true);
        }
      }

      // 100 rows through one PreparedStatement, then an aggregate with parameters.
      try (PreparedStatement ps = conn.prepareStatement(
          "INSERT INTO " + table + " (id, name, amount) VALUES (?, ?, ?)")) {
        for (int i = 10; i < 110; i++) {
          ps.setInt(1, i);
          ps.setString(2, "n" + i);
          ps.setBigDecimal(3, new BigDecimal(i).movePointLeft(1)); // sum 10.0..10.9 = 595.0
          ps.executeUpdate();
        }
      }
      try (PreparedStatement ps = conn.prepareStatement("SELECT count(*), sum(amount), min(name)"
          + " FROM " + table + " WHERE id BETWEEN ? AND ? AND name LIKE ?")) {
        ps.setInt(1, 10);
        ps.setInt(2, 109);
        ps.setString(3, "n%");
        try (ResultSet rs = ps.executeQuery()) {
          rs.next();
          ck.equal("aggregate over 100 parameterised rows",
              Arrays.asList(rs.getLong(1), rs.getBigDecimal(2), rs.getString(3)),
              Arrays.asList(100L, new BigDecimal("595.0000"), "n10"));
        }
      }

      SQLException err = ck.expectError("division by zero is SQLSTATE 22012", "22012",
          () -> st.executeQuery("SELECT 1/0").close());
      ck.check("division by zero message", err != null && err.getMessage().contains("division by zero"),
          err == null ? "no error" : err.getMessage());
      ck.equal("connection usable after the error", queryLong(conn, "SELECT 42"), 42L);
      ck.equal("final row count", queryLong(conn, "SELECT count(*) FROM " + table), 102L);
    }
  }

  // ------------------------------------------------------------------------------- batch

  private void runBatch(Checker ck, Connection conn, String table, String label, boolean rewrite)
      throws SQLException {
    try (Statement st = conn.createStatement()) {
      st.execute("DROP TABLE IF EXISTS " + table);
      st.execute("CREATE TABLE " + table + " (id int PRIMARY KEY, v text, n bigint)");
    }
    int[] counts;
    try (PreparedStatement ps = conn.prepareStatement(
        "INSERT INTO " + table + " (id, v, n) VALUES (?, ?, ?)")) {
      for (int i = 1; i <= 1000; i++) {
        ps.setInt(1, i);
        ps.setString(2, "row-" + i + "-ü");
        ps.setLong(3, (long) i * 3);
        ps.addBatch();
      }
      counts = ps.executeBatch();
    }
    ck.equal(label + ": executeBatch returns 1000 update counts", counts.length, 1000);
    // Rewritten multi-row INSERTs report SUCCESS_NO_INFO for each statement.
    int want = rewrite ? Statement.SUCCESS_NO_INFO : 1;
    long matching = Arrays.stream(counts).filter(c -> c == want).count();
    ck.equal(label + ": every update count is " + want, matching, 1000L);
    try (Statement st = conn.createStatement();
        ResultSet rs = st.executeQuery("SELECT count(*), sum(id), sum(n), count(DISTINCT v),"
            + " max(v) FILTER (WHERE id = 1000) FROM " + table)) {
      rs.next();
      ck.equal(label + ": count, sums and values after the batch",
          Arrays.asList(rs.getLong(1), rs.getLong(2), rs.getLong(3), rs.getLong(4), rs.getString(5)),
          Arrays.asList(1000L, 500500L, 1501500L, 1000L, "row-1000-ü"));
    }

    // A batch with a duplicate key fails as a whole in a transaction and changes nothing.
    conn.setAutoCommit(false);
    try (PreparedStatement ps = conn.prepareStatement(
        "INSERT INTO " + table + " (id, v, n) VALUES (?, ?, ?)")) {
      for (int i : new int[] {2001, 2002, 5, 2003}) {
        ps.setInt(1, i);
        ps.setString(2, "dup");
        ps.setLong(3, 0);
        ps.addBatch();
      }
      try {
        ps.executeBatch();
        ck.check(label + ": batch with a duplicate key fails", false, "no error raised");
      } catch (BatchUpdateException e) {
        SQLException cause = e.getNextException() != null ? e.getNextException() : e;
        ck.equal(label + ": batch failure SQLSTATE", cause.getSQLState(), "23505");
      }
    }
    conn.rollback();
    conn.setAutoCommit(true);
    ck.equal(label + ": failed batch left nothing behind",
        queryLong(conn, "SELECT count(*) FROM " + table), 1000L);
  }

  private void batch(Checker ck, List<String> tables) throws SQLException {
    String table = prefix + "_batch";
    tables.add(table);
    try (Connection conn = connect()) {
      boolean rewrite = conn.unwrap(org.postgresql.core.BaseConnection.class)
          .getQueryExecutor().isReWriteBatchedInsertsEnabled();
      System.out.println("info batch: reWriteBatchedInserts=" + rewrite + " (from the URL)");
      runBatch(ck, conn, table, "url settings", rewrite);
    }
    // And always once with the rewrite forced on in code, whatever the URL says.
    Properties extra = new Properties();
    PGProperty.REWRITE_BATCHED_INSERTS.set(extra, true);
    try (Connection conn = connect(extra)) {
      boolean rewrite = conn.unwrap(org.postgresql.core.BaseConnection.class)
          .getQueryExecutor().isReWriteBatchedInsertsEnabled();
      runBatch(ck, conn, table, "rewrite " + (rewrite ? "on" : "off (URL overrides)"), rewrite);
    }
  }

  // ------------------------------------------------------------------------------- prepared

  private void prepared(Checker ck, List<String> tables) throws SQLException {
    String table = prefix + "_prep";
    tables.add(table);
    Properties extra = new Properties();
    // Server-side prepared statements from the first execution (named Parse,
    // then Bind/Execute only): the same as prepareThreshold=1 in the URL.
    PGProperty.PREPARE_THRESHOLD.set(extra, 1);
    try (Connection conn = connect(extra); Statement st = conn.createStatement()) {
      st.execute("DROP TABLE IF EXISTS " + table);
      st.execute("CREATE TABLE " + table + " (id int PRIMARY KEY, label text, weight numeric)");
      try (PreparedStatement ins = conn.prepareStatement(
          "INSERT INTO " + table + " (id, label, weight) VALUES (?, ?, ?)")) {
        for (int i = 0; i < 50; i++) {
          ins.setInt(1, i);
          ins.setString(2, "L" + i + "-é");
          ins.setBigDecimal(3, new BigDecimal(i).movePointLeft(2));
          ins.executeUpdate();
        }
      }
      try (PreparedStatement ps = conn.prepareStatement("SELECT id, label, weight * 100,"
          + " ?::int * 2 FROM " + table + " WHERE id = ?")) {
        ck.equal("prepareThreshold is 1", ps.unwrap(PGStatement.class).getPrepareThreshold(), 1);
        int wrong = 0;
        String firstWrong = "";
        for (int i = 0; i < 50; i++) {
          ps.setInt(1, i + 1000);
          ps.setInt(2, i);
          try (ResultSet rs = ps.executeQuery()) {
            List<Object> got = new ArrayList<>();
            while (rs.next()) {
              got.add(rs.getInt(1));
              got.add(rs.getString(2));
              got.add(rs.getBigDecimal(3).intValueExact());
              got.add(rs.getInt(4));
            }
            List<Object> want = Arrays.asList(i, "L" + i + "-é", i, (i + 1000) * 2);
            if (!got.equals(want)) {
              wrong++;
              if (firstWrong.isEmpty()) {
                firstWrong = "run " + i + ": got " + got + ", want " + want;
              }
            }
          }
          if (i == 0) {
            ck.equal("server-side prepare used from the first execution",
                ps.unwrap(PGStatement.class).isUseServerPrepare(), true);
          }
        }
        ck.check("same PreparedStatement executed 50 times with exact results", wrong == 0,
            wrong + " wrong; " + firstWrong);
      }
      // Two statements prepared at once on one connection, interleaved.
      try (PreparedStatement a = conn.prepareStatement("SELECT ?::text || '-a'");
          PreparedStatement b = conn.prepareStatement("SELECT ?::int + 1")) {
        StringBuilder got = new StringBuilder();
        for (int i = 0; i < 5; i++) {
          a.setString(1, "x" + i);
          b.setInt(1, i);
          try (ResultSet ra = a.executeQuery(); ResultSet rb = b.executeQuery()) {
            ra.next();
            rb.next();
            got.append(ra.getString(1)).append('/').append(rb.getInt(1)).append(' ');
          }
        }
        ck.equal("two prepared statements interleaved", got.toString().trim(),
            "x0-a/1 x1-a/2 x2-a/3 x3-a/4 x4-a/5");
      }
      // An error while executing a server-prepared statement does not break it.
      try (PreparedStatement ps = conn.prepareStatement("SELECT 100 / ?")) {
        ps.setInt(1, 4);
        try (ResultSet rs = ps.executeQuery()) {
          rs.next();
          ck.equal("prepared division", rs.getInt(1), 25);
        }
        ps.setInt(1, 0);
        ck.expectError("prepared division by zero is 22012", "22012", () -> ps.executeQuery().close());
        ps.setInt(1, 5);
        try (ResultSet rs = ps.executeQuery()) {
          rs.next();
          ck.equal("prepared statement usable after its error", rs.getInt(1), 20);
        }
      }
    }
  }

  // ------------------------------------------------------------------------------- transaction

  private void transaction(Checker ck, List<String> tables) throws SQLException {
    String table = prefix + "_tx";
    tables.add(table);
    try (Connection conn = connect(); Connection other = connect()) {
      try (Statement st = conn.createStatement()) {
        st.execute("DROP TABLE IF EXISTS " + table);
        st.execute("CREATE TABLE " + table + " (id int PRIMARY KEY, v text)");
      }
      String count = "SELECT count(*) FROM " + table;
      conn.setAutoCommit(false);
      try (PreparedStatement ins = conn.prepareStatement(
          "INSERT INTO " + table + " (id, v) VALUES (?, ?)")) {
        ins.setInt(1, 1);
        ins.setString(2, "before savepoint");
        ins.executeUpdate();
        Savepoint sp = conn.setSavepoint("sp1");
        ins.setInt(1, 2);
        ins.setString(2, "undone");
        ins.executeUpdate();
        ck.equal("both rows visible inside the transaction", queryLong(conn, count), 2L);
        ck.equal("uncommitted rows invisible to another connection", queryLong(other, count), 0L);
        conn.rollback(sp);
        ck.equal("rollback to savepoint undoes the second row", queryLong(conn, count), 1L);
        ins.setInt(1, 3);
        ins.setString(2, "after savepoint");
        ins.executeUpdate();

        // An error after a savepoint: rolling back to it saves the transaction.
        Savepoint sp2 = conn.setSavepoint();
        ins.setInt(1, 1);
        ins.setString(2, "duplicate");
        ck.expectError("duplicate key inside the transaction is 23505", "23505", ins::executeUpdate);
        conn.rollback(sp2);
        ck.equal("transaction continues after rollback to savepoint", queryLong(conn, count), 2L);
        conn.commit();
      }
      try (Statement st = other.createStatement();
          ResultSet rs = st.executeQuery("SELECT id, v FROM " + table + " ORDER BY id")) {
        List<String> rows = new ArrayList<>();
        while (rs.next()) {
          rows.add(rs.getInt(1) + ":" + rs.getString(2));
        }
        ck.equal("committed rows visible to another connection", rows,
            Arrays.asList("1:before savepoint", "3:after savepoint"));
      }

      // A whole transaction rolled back.
      try (Statement st = conn.createStatement()) {
        st.executeUpdate("INSERT INTO " + table + " (id, v) VALUES (10, 'rolled back')");
        st.executeUpdate("DELETE FROM " + table + " WHERE id = 1");
      }
      conn.rollback();
      ck.equal("rolled back transaction left the rows as they were", queryLong(other,
          "SELECT sum(id) FROM " + table), 4L);

      // An error without a savepoint aborts the transaction until rollback.
      ck.expectError("division by zero in the transaction is 22012", "22012",
          () -> queryLong(conn, "SELECT 1/0"));
      ck.expectError("aborted transaction refuses statements with 25P02", "25P02",
          () -> queryLong(conn, "SELECT 1"));
      conn.rollback();
      conn.setAutoCommit(true);
      ck.equal("connection usable after rollback", queryLong(conn, count), 2L);
    }
  }

  // ------------------------------------------------------------------------------- metadata

  private void metadata(Checker ck, List<String> tables) throws SQLException {
    String table = prefix + "_meta";
    tables.add(table);
    try (Connection conn = connect()) {
      try (Statement st = conn.createStatement()) {
        st.execute("DROP TABLE IF EXISTS " + table);
        st.execute("CREATE TABLE " + table + " (id int PRIMARY KEY, label text NOT NULL,"
            + " amount numeric(10,2))");
      }
      DatabaseMetaData md = conn.getMetaData();
      ck.equal("database product name", md.getDatabaseProductName(), "PostgreSQL");
      String serverVersion;
      try (Statement st = conn.createStatement();
          ResultSet rs = st.executeQuery("SHOW server_version")) {
        rs.next();
        serverVersion = rs.getString(1);
      }
      // Compared on the version number only: the ParameterStatus the driver keeps
      // and the SHOW result may differ in their build suffix.
      ck.equal("database product version matches server_version",
          md.getDatabaseProductVersion().split(" ")[0], serverVersion.split(" ")[0]);
      ck.check("driver name", md.getDriverName().contains("PostgreSQL"), md.getDriverName());

      String schema = conn.getSchema();
      String escaped = table.replace("_", md.getSearchStringEscape() + "_");
      List<String> found = new ArrayList<>();
      try (ResultSet rs = md.getTables(null, schema, escaped, new String[] {"TABLE"})) {
        while (rs.next()) {
          found.add(rs.getString("TABLE_SCHEM") + "." + rs.getString("TABLE_NAME") + ":"
              + rs.getString("TABLE_TYPE"));
        }
      }
      ck.equal("getTables finds the table", found, Arrays.asList(schema + "." + table + ":TABLE"));

      TreeSet<String> all = new TreeSet<>();
      try (ResultSet rs = md.getTables(null, schema, "%", new String[] {"TABLE"})) {
        while (rs.next()) {
          all.add(rs.getString("TABLE_NAME"));
        }
      }
      ck.check("getTables with a wildcard lists the table", all.contains(table),
          all.size() + " tables, not including it");

      List<String> columns = new ArrayList<>();
      try (ResultSet rs = md.getColumns(null, schema, escaped, "%")) {
        while (rs.next()) {
          columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME").toLowerCase(Locale.ROOT)
              + ":" + rs.getString("IS_NULLABLE"));
        }
      }
      ck.equal("getColumns", columns,
          Arrays.asList("id:int4:NO", "label:text:NO", "amount:numeric:YES"));

      List<String> keys = new ArrayList<>();
      try (ResultSet rs = md.getPrimaryKeys(null, schema, table)) {
        while (rs.next()) {
          keys.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("PK_NAME"));
        }
      }
      ck.equal("getPrimaryKeys", keys, Arrays.asList("id:" + table + "_pkey"));

      List<String> missing = new ArrayList<>();
      try (ResultSet rs = md.getTables(null, schema, prefix + "_no_such_table", null)) {
        while (rs.next()) {
          missing.add(rs.getString("TABLE_NAME"));
        }
      }
      ck.equal("getTables of a missing table is empty", missing, new ArrayList<String>());
    }
  }

  // ------------------------------------------------------------------------------- main

  private int run(String scenarioArg) {
    List<String> names = "all".equals(scenarioArg) ? SCENARIOS : Arrays.asList(scenarioArg);
    int passed = 0;
    int failed = 0;
    int status = 0;
    for (String name : names) {
      Checker ck = new Checker(name);
      List<String> tables = new ArrayList<>();
      try {
        switch (name) {
          case "basic": basic(ck, tables); break;
          case "batch": batch(ck, tables); break;
          case "prepared": prepared(ck, tables); break;
          case "transaction": transaction(ck, tables); break;
          case "metadata": metadata(ck, tables); break;
          default: throw new IllegalArgumentException(name);
        }
      } catch (CheckFailed e) {
        System.out.println("FAIL " + name + ": stopped after failed check '" + e.getMessage() + "'");
      } catch (SQLException e) {
        String state = e.getSQLState() == null ? "" : e.getSQLState();
        if (state.startsWith("08") || state.startsWith("28") || state.equals("3D000")
            || state.equals("53300") || state.equals("57P01")) {
          System.out.println("FAIL " + name + ": cannot run: connection error: SQLSTATE " + state
              + " " + e.getMessage());
        } else {
          System.out.println("FAIL " + name + ": unexpected SQLException (SQLSTATE " + state + "): "
              + e.getMessage());
          e.printStackTrace(System.err);
        }
        status = 2;
      } catch (RuntimeException e) {
        System.out.println("FAIL " + name + ": unexpected " + e);
        e.printStackTrace(System.err);
        status = 2;
      } finally {
        dropTables(tables);
      }
      passed += ck.passed;
      failed += ck.failed;
    }
    if (failed > 0 && status == 0) {
      status = 1;
    }
    if (status == 0 && passed == 0) {
      status = 2;
    }
    System.out.println((status == 0 ? "PASS" : "FAIL") + " jdbc " + scenarioArg + ": " + passed
        + " checks ok, " + failed + " failed"
        + (status <= 1 ? "" : " (exit " + status + ": could not run to completion)"));
    System.out.flush();
    return status;
  }

  public static void main(String[] args) {
    if (args.length < 4 || args.length > 5
        || !(SCENARIOS.contains(args[3]) || "all".equals(args[3]))) {
      System.out.println("FAIL jdbc: usage: PgHandoffJdbcClient JDBC_URL USER PASSWORD"
          + " basic|batch|prepared|transaction|metadata|all [PREFIX]");
      System.exit(2);
    }
    String prefix = args.length == 5 ? args[4] : "pgh_jdbc_" + ProcessHandle.current().pid();
    if (!prefix.matches("[a-z_][a-z0-9_]{0,40}")) {
      System.out.println("FAIL jdbc: usage: PREFIX must match [a-z_][a-z0-9_]{0,40}");
      System.exit(2);
    }
    long timeoutSeconds = 180;
    String envTimeout = System.getenv("PGHANDOFF_CLIENT_TIMEOUT");
    if (envTimeout != null && !envTimeout.isEmpty()) {
      timeoutSeconds = Long.parseLong(envTimeout);
    }
    final long watchdogSeconds = timeoutSeconds;
    final String scenario = args[3];
    Thread watchdog = new Thread(() -> {
      try {
        Thread.sleep(watchdogSeconds * 1000);
      } catch (InterruptedException e) {
        return;
      }
      System.out.println("FAIL jdbc: watchdog: scenario " + scenario + " still running after "
          + watchdogSeconds + "s");
      System.out.flush();
      Runtime.getRuntime().halt(3);
    }, "watchdog");
    watchdog.setDaemon(true);
    watchdog.start();

    String tablePrefix = prefix + "_" + scenario.substring(0, 3);
    PgHandoffJdbcClient client = new PgHandoffJdbcClient(args[0], args[1], args[2], tablePrefix);
    int status = client.run(scenario);
    System.exit(status);
  }

  static {
    // The driver is on the class path; loading it explicitly gives a clear error if it is not.
    try {
      Class.forName("org.postgresql.Driver");
    } catch (ClassNotFoundException e) {
      System.out.println("FAIL jdbc: org.postgresql.Driver not on the class path"
          + " (add /usr/share/java/postgresql.jar)");
      System.exit(2);
    }
  }
}
