#!/usr/bin/env node
// node-postgres workload for pghandoff integration tests.
//
//   node tests/clients/node/client.js --scenario NAME [--prefix P] [--timeout SECONDS]
//
// Connection from the libpq environment: PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE
// (node-postgres reads them itself). Scenarios: basic, pipeline, prepared, errors,
// transaction (or "all"). Prints one line per check ("ok   <check>" / "FAIL <check>: <why>").
// Exit: 0 every check passed, 1 a check failed, 2 could not run (bad arguments, cannot
// connect, unexpected error), 3 watchdog fired. The password is never printed.
'use strict';

const assert = require('node:assert');
const { Client } = require('pg');

const SCENARIOS = ['basic', 'pipeline', 'prepared', 'errors', 'transaction', 'ledger'];

class CheckFailed extends Error {}

class Checker {
  constructor(scenario) {
    this.scenario = scenario;
    this.passed = 0;
    this.failed = 0;
  }

  check(name, condition, detail) {
    if (condition) {
      this.passed += 1;
      console.log(`ok   ${this.scenario}: ${name}`);
    } else {
      this.failed += 1;
      console.log(`FAIL ${this.scenario}: ${name}${detail ? `: ${detail}` : ''}`);
    }
    return condition;
  }

  // Deep strict equality (Buffers, Dates, arrays, objects).
  equal(name, got, want) {
    let same = true;
    try {
      assert.deepStrictEqual(got, want);
    } catch (_) {
      same = false;
    }
    return this.check(name, same, `got ${short(got)}, want ${short(want)}`);
  }

  require(name, condition, detail) {
    if (!this.check(name, condition, detail)) throw new CheckFailed(name);
  }

  // Runs fn, which must reject with a database error of the given SQLSTATE.
  async expectError(name, sqlstate, fn) {
    try {
      await fn();
      this.check(name, false, `no error raised, want SQLSTATE ${sqlstate}`);
      return null;
    } catch (err) {
      this.check(name, err && err.code === sqlstate,
        `got ${err && err.code} (${err && err.message}), want SQLSTATE ${sqlstate}`);
      return err;
    }
  }
}

function short(value) {
  let text;
  try {
    text = JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v));
  } catch (_) {
    text = String(value);
  }
  if (text === undefined) text = String(value);
  return text.length > 300 ? `${text.slice(0, 300)}... (${text.length} chars)` : text;
}

function parseArgs(argv) {
  const args = { scenario: null, prefix: `pgh_node_${process.pid}`, timeout: 120 };
  for (let i = 0; i < argv.length; i += 1) {
    const key = argv[i];
    const value = argv[i + 1];
    if (key === '--scenario') args.scenario = value;
    else if (key === '--prefix') args.prefix = value;
    else if (key === '--timeout') args.timeout = Number(value);
    else throw new Error(`unknown argument ${key}`);
    i += 1;
  }
  if (!args.scenario || !(SCENARIOS.includes(args.scenario) || args.scenario === 'all')) {
    throw new Error(`--scenario must be one of ${SCENARIOS.join(', ')}, all`);
  }
  if (!/^[a-z_][a-z0-9_]{0,40}$/.test(args.prefix)) {
    throw new Error('--prefix must match [a-z_][a-z0-9_]{0,40}');
  }
  if (!(args.timeout > 0)) throw new Error('--timeout must be a positive number of seconds');
  return args;
}

async function connect() {
  // Everything else (host, port, user, password, database) comes from PG* variables.
  const client = new Client({ connectionTimeoutMillis: 10000 });
  // An 'error' event without a listener would crash the process (e.g. the proxy
  // closing an idle connection); report it instead.
  client.on('error', (err) => console.log(`FAIL connection error event: ${err.code || ''} ${err.message}`));
  await client.connect();
  return client;
}

async function dropTables(tables) {
  if (tables.length === 0) return;
  let client;
  try {
    client = await connect();
    for (const table of tables) await client.query(`DROP TABLE IF EXISTS ${table}`);
  } catch (err) {
    console.error(`warning: could not drop tables ${tables.join(', ')}: ${err.message}`);
  } finally {
    if (client) await client.end().catch(() => {});
  }
}

// ------------------------------------------------------------------------------ basic

async function scenarioBasic(prefix, ck, tables) {
  const table = `${prefix}_basic`;
  tables.push(table);
  const client = await connect();
  try {
    await client.query(`DROP TABLE IF EXISTS ${table}`);
    await client.query(`CREATE TABLE ${table} (
      id int PRIMARY KEY, big bigint, name text, flag boolean, amount numeric(12,3),
      ratio double precision, day date, at timestamptz, doc jsonb, data bytea, tags int[],
      uid uuid)`);
    ck.check('create table', true);

    const blob = Buffer.from(Array.from({ length: 256 }, (_v, i) => i));
    const at = new Date(Date.UTC(2024, 1, 29, 12, 34, 56, 789));
    const values = [1, '9007199254740993', 'héllo wörld 🐘', true, '12345.678', 0.1 + 0.2,
      '2024-02-29', at, { a: 1, b: [true, null, 'x'], c: { d: 'é' } }, blob, [3, 1, 2],
      'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'];
    const ins = await client.query(
      `INSERT INTO ${table} (id, big, name, flag, amount, ratio, day, at, doc, data, tags, uid)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id`, values);
    ck.equal('insert with 12 parameters', [ins.command, ins.rowCount, ins.rows], ['INSERT', 1, [{ id: 1 }]]);

    const sel = await client.query(
      `SELECT id, big, name, flag, amount, ratio, to_char(day, 'YYYY-MM-DD') AS day, at, doc,
              data, tags, uid FROM ${table} WHERE id = $1`, [1]);
    ck.equal('row read back exactly', sel.rows, [{
      id: 1, big: '9007199254740993', name: 'héllo wörld 🐘', flag: true, amount: '12345.678',
      ratio: 0.30000000000000004, day: '2024-02-29', at, doc: { a: 1, b: [true, null, 'x'], c: { d: 'é' } },
      data: blob, tags: [3, 1, 2], uid: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    }]);
    ck.equal('result field names', sel.fields.map((f) => f.name),
      ['id', 'big', 'name', 'flag', 'amount', 'ratio', 'day', 'at', 'doc', 'data', 'tags', 'uid']);

    // NULLs for every type.
    await client.query(
      `INSERT INTO ${table} (id, big, name, flag, amount, ratio, day, at, doc, data, tags, uid)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
      [2, null, null, null, null, null, null, null, null, null, null, null]);
    const nulls = await client.query(`SELECT big, name, flag, amount, ratio, day, at, doc, data, tags, uid
      FROM ${table} WHERE id = $1`, [2]);
    ck.equal('NULL parameters read back as null', Object.values(nulls.rows[0]), Array(11).fill(null));

    // 50 more rows, then aggregate with several parameters of different types.
    for (let i = 3; i <= 52; i += 1) {
      await client.query(`INSERT INTO ${table} (id, big, name, flag) VALUES ($1, $2, $3, $4)`,
        [i, i * 1000, `n${i}`, i % 3 === 0]);
    }
    const agg = await client.query(
      `SELECT count(*)::int AS n, sum(big)::text AS s, min(name) AS lo, max(name) AS hi
       FROM ${table} WHERE id BETWEEN $1 AND $2 AND flag = $3 AND name LIKE $4`,
      [3, 52, true, 'n%']);
    // ids divisible by 3 in [3, 52]: 3, 6, ..., 51 -> 17 rows, sum 1000 * 3 * (1+...+17) = 459000
    ck.equal('aggregate with 4 parameters', agg.rows, [{ n: 17, s: '459000', lo: 'n12', hi: 'n9' }]);

    const expr = await client.query('SELECT $1::int + $2::int AS sum, $3::text || $4::text AS cat,'
      + ' $5::boolean AND NOT $6::boolean AS logic, $7::float8 * 2 AS dbl, $8::int[] AS arr',
    [40, 2, 'foo', 'bar', true, false, 1.25, [1, null, 3]]);
    ck.equal('expressions with 8 parameters', expr.rows,
      [{ sum: 42, cat: 'foobar', logic: true, dbl: 2.5, arr: [1, null, 3] }]);

    const simple = await client.query(`SELECT count(*)::int AS n FROM ${table}`);
    ck.equal('simple query (no parameters)', simple.rows, [{ n: 52 }]);

    const multi = await client.query('SELECT 1 AS a; SELECT 2 AS b');
    ck.equal('multi-statement simple query', multi.map((r) => r.rows), [[{ a: 1 }], [{ b: 2 }]]);
  } finally {
    await client.end();
  }
}

// ------------------------------------------------------------------------------ pipeline

async function scenarioPipeline(prefix, ck, tables) {
  const table = `${prefix}_pipe`;
  tables.push(table);
  const client = await connect();
  try {
    await client.query(`DROP TABLE IF EXISTS ${table}`);
    await client.query(`CREATE TABLE ${table} (id int PRIMARY KEY, v text)`);

    // 200 queries handed to one client at once: node-postgres queues them (and
    // sends each after the previous one's ReadyForQuery) and the responses must
    // come back matched to the right query. pg 8.x warns that this queueing is
    // deprecated (removed in pg 9): the version is pinned in package.json.
    const N = 200;
    const promises = [];
    for (let i = 0; i < N; i += 1) {
      promises.push(client.query('SELECT $1::int AS n, $2::text AS s, $1::int * $1::int AS sq',
        [i, `value-${i}-é`]));
    }
    const results = await Promise.all(promises);
    let mismatches = 0;
    let firstBad = '';
    results.forEach((res, i) => {
      const want = [{ n: i, s: `value-${i}-é`, sq: i * i }];
      try {
        assert.deepStrictEqual(res.rows, want);
      } catch (_) {
        mismatches += 1;
        if (!firstBad) firstBad = `query ${i}: got ${short(res.rows)}, want ${short(want)}`;
      }
    });
    ck.check(`${N} concurrent parameterised selects matched to their parameters`, mismatches === 0,
      `${mismatches} mismatched; ${firstBad}`);

    // Writes queued the same way, with one failing query in the middle: only
    // that query fails, those before and after it succeed.
    const writes = [];
    for (let i = 0; i < N; i += 1) {
      if (i === 100) {
        writes.push(client.query('SELECT 1 / $1::int AS boom', [0]).then(
          () => ({ ok: true }), (err) => ({ ok: false, code: err.code })));
      } else {
        writes.push(client.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2) RETURNING id`, [i, `w${i}`])
          .then((res) => ({ ok: true, id: res.rows[0].id }), (err) => ({ ok: false, code: err.code })));
      }
    }
    const outcomes = await Promise.all(writes);
    ck.equal('queued query 100 failed with 22012', outcomes[100], { ok: false, code: '22012' });
    const badWrites = outcomes.filter((o, i) => i !== 100 && !(o.ok && o.id === i));
    ck.check('the other 199 queued inserts succeeded with their own ids', badWrites.length === 0,
      `${badWrites.length} bad, first ${short(badWrites[0])}`);
    const count = await client.query(`SELECT count(*)::int AS n, sum(id)::int AS s FROM ${table}`);
    ck.equal('table holds the 199 queued rows', count.rows, [{ n: 199, s: (N * (N - 1)) / 2 - 100 }]);

    // The same on a client in pipeline mode (pg >= 8.21): every query is written
    // to the socket at once, without waiting for the previous ReadyForQuery, so
    // the server (or proxy) sees 200 Parse/Bind/Execute/Sync groups back to back.
    const piped = new Client({ connectionTimeoutMillis: 10000, pipeline: true });
    piped.on('error', (err) => console.log(`FAIL pipeline connection error event: ${err.code || ''} ${err.message}`));
    await piped.connect();
    try {
      const wire = [];
      for (let i = 0; i < N; i += 1) {
        const p = i === 50
          ? piped.query('SELECT 1 / $1::int AS boom', [0])
          : piped.query('SELECT $1::int AS n, $2::text AS s', [i, `wire-${i}`]);
        wire.push(p.then((res) => ({ ok: true, rows: res.rows }), (err) => ({ ok: false, code: err.code })));
      }
      const wireOut = await Promise.all(wire);
      ck.equal('wire-pipelined query 50 failed with 22012', wireOut[50], { ok: false, code: '22012' });
      const wireBad = [];
      wireOut.forEach((o, i) => {
        if (i === 50) return;
        try {
          assert.deepStrictEqual(o, { ok: true, rows: [{ n: i, s: `wire-${i}` }] });
        } catch (_) {
          wireBad.push(`query ${i}: ${short(o)}`);
        }
      });
      ck.check(`the other ${N - 1} wire-pipelined queries matched their parameters`, wireBad.length === 0,
        `${wireBad.length} wrong, first ${wireBad[0]}`);
      const tx = await Promise.all([
        piped.query('BEGIN'),
        piped.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2)`, [1000, 'piped']),
        piped.query(`SELECT count(*)::int AS n FROM ${table} WHERE id = $1`, [1000]),
        piped.query('ROLLBACK'),
        piped.query(`SELECT count(*)::int AS n FROM ${table} WHERE id = $1`, [1000]),
      ]);
      ck.equal('wire-pipelined BEGIN/INSERT/SELECT/ROLLBACK/SELECT',
        tx.map((r) => [r.command, r.rows]),
        [['BEGIN', []], ['INSERT', []], ['SELECT', [{ n: 1 }]], ['ROLLBACK', []], ['SELECT', [{ n: 0 }]]]);
    } finally {
      await piped.end();
    }

    // Mixed simple and extended queries interleaved.
    const mixed = await Promise.all([
      client.query('SELECT 1 AS x'),
      client.query('SELECT $1::text AS x', ['two']),
      client.query({ text: 'SELECT $1::int + 1 AS x', values: [2], rowMode: 'array' }),
      client.query(`SELECT count(*)::int AS x FROM ${table}`),
    ]);
    ck.equal('interleaved simple/extended queries', mixed.map((r) => r.rows),
      [[{ x: 1 }], [{ x: 'two' }], [[3]], [{ x: 199 }]]);
  } finally {
    await client.end();
  }
}

// ------------------------------------------------------------------------------ prepared

async function scenarioPrepared(prefix, ck, tables) {
  const table = `${prefix}_prep`;
  tables.push(table);
  const client = await connect();
  const other = await connect();
  try {
    await client.query(`DROP TABLE IF EXISTS ${table}`);
    await client.query(`CREATE TABLE ${table} (id int PRIMARY KEY, label text, weight numeric)`);

    // A named statement: Parse once, then Bind/Execute on every later call.
    let bad = 0;
    let firstBad = '';
    for (let i = 0; i < 100; i += 1) {
      const res = await client.query({
        name: 'q1',
        text: 'SELECT $1::int * 3 AS triple, upper($2::text) AS up, $3::numeric + 0.5 AS half, $4::text AS echo',
        values: [i, `lbl-${i}`, i, `é🐘-${i}`],
      });
      const want = [{ triple: i * 3, up: `LBL-${i}`, half: `${i}.5`, echo: `é🐘-${i}` }];
      try {
        assert.deepStrictEqual(res.rows, want);
      } catch (_) {
        bad += 1;
        if (!firstBad) firstBad = `run ${i}: got ${short(res.rows)}, want ${short(want)}`;
      }
    }
    ck.check('named statement q1 executed 100 times with exact results', bad === 0,
      `${bad} wrong; ${firstBad}`);

    for (let i = 0; i < 100; i += 1) {
      await client.query({
        name: 'ins',
        text: `INSERT INTO ${table} (id, label, weight) VALUES ($1, $2, $3)`,
        values: [i, `L${i}`, i / 4],
      });
    }
    const sum = await client.query({
      name: 'sum', text: `SELECT count(*)::int AS n, sum(weight)::text AS w FROM ${table} WHERE id >= $1`, values: [0],
    });
    // numeric keeps the largest scale of its inputs: 0.25 steps sum to a 2-digit scale.
    ck.equal('named insert executed 100 times', sum.rows, [{ n: 100, w: '1237.50' }]);
    const sumAgain = await client.query({
      name: 'sum', text: `SELECT count(*)::int AS n, sum(weight)::text AS w FROM ${table} WHERE id >= $1`, values: [50],
    });
    ck.equal('named select re-executed with another parameter', sumAgain.rows, [{ n: 50, w: '931.25' }]);

    // The same name on another connection is that connection's own statement.
    const otherRes = await other.query({ name: 'q1', text: 'SELECT $1::text AS other', values: ['mine'] });
    ck.equal('same statement name on another connection is independent', otherRes.rows, [{ other: 'mine' }]);
    const again = await client.query({
      name: 'q1',
      text: 'SELECT $1::int * 3 AS triple, upper($2::text) AS up, $3::numeric + 0.5 AS half, $4::text AS echo',
      values: [7, 'x', 1, 'y'],
    });
    ck.equal('first connection still has its own q1', again.rows,
      [{ triple: 21, up: 'X', half: '1.5', echo: 'y' }]);

    // Statement-level SQL PREPARE/EXECUTE/DEALLOCATE through the simple protocol.
    await client.query('PREPARE sqlprep (int, int) AS SELECT $1 + $2 AS total');
    const exec = await client.query('EXECUTE sqlprep (40, 2)');
    ck.equal('SQL PREPARE/EXECUTE', exec.rows, [{ total: 42 }]);
    await client.query('DEALLOCATE sqlprep');
    await ck.expectError('EXECUTE after DEALLOCATE fails with 26000', '26000',
      () => client.query('EXECUTE sqlprep (1, 1)'));
  } finally {
    await client.end();
    await other.end();
  }
}

// ------------------------------------------------------------------------------ errors

async function scenarioErrors(prefix, ck, tables) {
  const table = `${prefix}_err`;
  tables.push(table);
  const client = await connect();
  try {
    await client.query(`DROP TABLE IF EXISTS ${table}`);
    await client.query(`CREATE TABLE ${table} (id int PRIMARY KEY, v text)`);

    const syntax = await ck.expectError('syntax error reported as 42601', '42601',
      () => client.query('SELEC 1'));
    ck.check('syntax error message and position', syntax && /syntax error/.test(syntax.message)
      && syntax.position === '1', `message ${syntax && syntax.message}, position ${syntax && syntax.position}`);
    const after = await client.query('SELECT $1::text AS v', ['after syntax error']);
    ck.equal('client works after syntax error', after.rows, [{ v: 'after syntax error' }]);

    await ck.expectError('syntax error in an extended query reported as 42601', '42601',
      () => client.query('SELECT $1::int FROMM nowhere', [1]));
    const after2 = await client.query('SELECT 2 AS v');
    ck.equal('client works after extended-query syntax error', after2.rows, [{ v: 2 }]);

    await client.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2)`, [1, 'first']);
    const dup = await ck.expectError('unique violation reported as 23505', '23505',
      () => client.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2)`, [1, 'second']));
    ck.equal('unique violation names table and constraint',
      dup && [dup.table, dup.constraint, dup.severity], [table, `${table}_pkey`, 'ERROR']);
    const rows = await client.query(`SELECT id, v FROM ${table} ORDER BY id`);
    ck.equal('original row kept after unique violation', rows.rows, [{ id: 1, v: 'first' }]);

    await ck.expectError('bad parameter value reported as 22P02', '22P02',
      () => client.query('SELECT $1::int AS n', ['not a number']));
    await ck.expectError('undefined table reported as 42P01', '42P01',
      () => client.query(`SELECT * FROM ${prefix}_no_such_table`));

    // An error inside a transaction aborts it until ROLLBACK.
    await client.query('BEGIN');
    await ck.expectError('division by zero in a transaction is 22012', '22012',
      () => client.query('SELECT 1 / $1::int', [0]));
    await ck.expectError('next statement in the aborted transaction is 25P02', '25P02',
      () => client.query('SELECT 1'));
    await client.query('ROLLBACK');
    const last = await client.query(`SELECT count(*)::int AS n FROM ${table}`);
    ck.equal('client works after ROLLBACK of the failed transaction', last.rows, [{ n: 1 }]);
  } finally {
    await client.end();
  }
}

// ------------------------------------------------------------------------------ transaction

async function scenarioTransaction(prefix, ck, tables) {
  const table = `${prefix}_tx`;
  tables.push(table);
  const client = await connect();
  const other = await connect();
  try {
    await client.query(`DROP TABLE IF EXISTS ${table}`);
    await client.query(`CREATE TABLE ${table} (id int PRIMARY KEY, v text)`);

    await client.query('BEGIN');
    await client.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2)`, [1, 'rolled back']);
    const inside = await client.query(`SELECT count(*)::int AS n FROM ${table} WHERE id = $1`, [1]);
    ck.equal('insert visible inside its transaction', inside.rows, [{ n: 1 }]);
    const outside = await other.query(`SELECT count(*)::int AS n FROM ${table} WHERE id = $1`, [1]);
    ck.equal('uncommitted insert invisible to another connection', outside.rows, [{ n: 0 }]);
    const rb = await client.query('ROLLBACK');
    ck.equal('ROLLBACK command tag', rb.command, 'ROLLBACK');
    const absent = await client.query(`SELECT count(*)::int AS n FROM ${table} WHERE id = $1`, [1]);
    ck.equal('rolled back insert absent', absent.rows, [{ n: 0 }]);
    const absentOther = await other.query(`SELECT count(*)::int AS n FROM ${table}`);
    ck.equal('rolled back insert absent for another connection', absentOther.rows, [{ n: 0 }]);

    await client.query('BEGIN');
    await client.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2)`, [2, 'committed']);
    await client.query('SAVEPOINT sp1');
    await client.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2)`, [3, 'undone']);
    await client.query('ROLLBACK TO SAVEPOINT sp1');
    await client.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2)`, [4, 'kept']);
    const commit = await client.query('COMMIT');
    ck.equal('COMMIT command tag', commit.command, 'COMMIT');
    const committed = await other.query(`SELECT id, v FROM ${table} ORDER BY id`);
    ck.equal('committed rows visible, savepoint rollback honoured', committed.rows,
      [{ id: 2, v: 'committed' }, { id: 4, v: 'kept' }]);

    // A failed COMMIT (deferred constraint) rolls the whole transaction back.
    await client.query(`ALTER TABLE ${table} ADD CONSTRAINT ${table}_vu UNIQUE (v) DEFERRABLE INITIALLY DEFERRED`);
    await client.query('BEGIN');
    await client.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2)`, [5, 'kept']);
    await ck.expectError('COMMIT failing on a deferred unique constraint is 23505', '23505',
      () => client.query('COMMIT'));
    const afterFail = await other.query(`SELECT count(*)::int AS n FROM ${table}`);
    ck.equal('failed COMMIT left nothing behind', afterFail.rows, [{ n: 2 }]);
    const usable = await client.query('SELECT 1 AS ok');
    ck.equal('client usable after failed COMMIT', usable.rows, [{ ok: 1 }]);
  } finally {
    await client.end();
    await other.end();
  }
}

// ------------------------------------------------------------------------------ main

// Writes for PGHANDOFF_LEDGER_SECONDS into a table the caller made
// (PGHANDOFF_LEDGER_TABLE, kept afterwards) through the extended protocol
// (unnamed statements, a named prepared one, transactions) and reports what was
// acknowledged; every error is a failure.
async function scenarioLedger(prefix, ck, tables) {
  const table = process.env.PGHANDOFF_LEDGER_TABLE || 'ledger';
  const seconds = Number(process.env.PGHANDOFF_LEDGER_SECONDS || '5');
  const name = process.env.PGHANDOFF_LEDGER_CLIENT || 'node';
  const client = await connect();
  let acked = 0;
  let keysum = 0;
  let errors = 0;
  let k = 0;
  const deadline = Date.now() + seconds * 1000;
  try {
    while (Date.now() < deadline) {
      k += 1;
      try {
        if (k % 3 === 0) {
          await client.query('BEGIN');
          await client.query(`INSERT INTO ${table} (client, k, amount) VALUES ($1, $2, $3)`, [name, k, k / 4]);
          await client.query({ name: 'ledger_ins', text: `INSERT INTO ${table} (client, k, amount) VALUES ($1, $2, 0) RETURNING id`, values: [name, k + 1000000] });
          await client.query('COMMIT');
          acked += 2;
          keysum += 2 * k + 1000000;
        } else {
          const r = await client.query({ name: 'ledger_ins', text: `INSERT INTO ${table} (client, k, amount) VALUES ($1, $2, 0) RETURNING id`, values: [name, k] });
          if (r.rows.length !== 1) throw new Error('no id returned');
          acked += 1;
          keysum += k;
        }
        await client.query(`SELECT count(*) FROM ${table} WHERE client = $1`, [name]);
      } catch (err) {
        errors += 1;
        console.log(`error: SQLSTATE ${err.code || ''}: ${err.message}`);
        await client.query('ROLLBACK').catch(() => {});
      }
    }
  } finally {
    await client.end().catch(() => {});
  }
  ck.equal('errors while writing', errors, 0);
  ck.check('wrote rows', acked > 0);
  console.log(`ledger ${name}: acked=${acked} keysum=${keysum}`);
}

const RUNNERS = {
  basic: scenarioBasic,
  pipeline: scenarioPipeline,
  prepared: scenarioPrepared,
  errors: scenarioErrors,
  transaction: scenarioTransaction,
  ledger: scenarioLedger,
};

const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'ETIMEDOUT', 'EPIPE',
  'EHOSTUNREACH', '28P01', '28000', '3D000', '08006', '08001', '08P01', '57P01', '53300']);

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.log(`FAIL node: usage: ${err.message}`);
    console.log('usage: node client.js --scenario basic|pipeline|prepared|errors|transaction|all'
      + ' [--prefix P] [--timeout SECONDS]');
    return 2;
  }
  const watchdog = setTimeout(() => {
    console.log(`FAIL node: watchdog: scenario ${args.scenario} still running after ${args.timeout}s`);
    process.exit(3);
  }, args.timeout * 1000);
  watchdog.unref();

  const names = args.scenario === 'all' ? SCENARIOS : [args.scenario];
  let passed = 0;
  let failed = 0;
  let status = 0;
  for (const name of names) {
    const ck = new Checker(name);
    const tables = [];
    try {
      await RUNNERS[name](`${args.prefix}_${name.slice(0, 3)}`, ck, tables);
    } catch (err) {
      if (err instanceof CheckFailed) {
        console.log(`FAIL ${name}: stopped after failed check '${err.message}'`);
      } else if (err && (CONNECTION_CODES.has(err.code) || /connect|timeout|terminated/i.test(err.message))) {
        console.log(`FAIL ${name}: cannot run: connection error: ${err.code || ''} ${err.message}`.trimEnd());
        status = 2;
      } else {
        const code = err && err.code ? ` (SQLSTATE/code ${err.code})` : '';
        console.log(`FAIL ${name}: unexpected error${code}: ${err && err.message}`);
        console.error(err && err.stack);
        status = 2;
      }
    } finally {
      await dropTables(tables);
    }
    passed += ck.passed;
    failed += ck.failed;
  }
  if (failed > 0 && status === 0) status = 1;
  if (status === 0 && passed === 0) status = 2;
  const tail = status === 0 || status === 1 ? '' : ` (exit ${status}: could not run to completion)`;
  console.log(`${status === 0 ? 'PASS' : 'FAIL'} node ${args.scenario}: ${passed} checks ok, ${failed} failed${tail}`);
  return status;
}

// Exit explicitly: a connection left open by a failed scenario must not keep the
// process alive (stdout to a pipe or file is synchronous on Linux, nothing is lost).
main().then((status) => {
  process.exit(status);
}, (err) => {
  console.log(`FAIL node: internal error: ${err && err.stack}`);
  process.exit(2);
});
