// Process topology for the Node SDK suites (same as tests/sdk/python/conftest.py):
//
//   SDK client --> "gateway" lattice (under test)
//                    gpt-*    -> kind openai    --> "upstream" lattice (/v1)
//                    claude-* -> kind anthropic --> "upstream" lattice
//                    gemini-* -> kind gemini    --> "upstream" lattice
//                    llama*   -> kind ollama    --> "upstream" lattice
//                    demo     -> kind mock (alias demo-alias)
//                    deny forbidden-* (403), max_body_bytes = 1 MiB
//                  "upstream" lattice: model "*" -> kind mock
//
// The binary comes from $LATTICE_BIN (default <repo>/target/debug/lattice).

import { execFileSync, spawn } from 'node:child_process';
import { accessSync, constants, createWriteStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(HERE, '..', '..', '..');
export const LATTICE_BIN = process.env.LATTICE_BIN || path.join(REPO_ROOT, 'target', 'debug', 'lattice');
const STARTUP_TIMEOUT_MS = 30_000;
const LISTEN_RE = /^lattice listening on (https?:\/\/127\.0\.0\.1:\d+)\s*$/;

export const UPSTREAM_SECRET = 'sk-upstream-secret-for-sdk-tests';
export const CLIENT_OPENAI_KEY = 'sk-client-dummy';
export const CLIENT_ANTHROPIC_KEY = 'sk-ant-client-dummy';

const UPSTREAM_CONFIG = `# "upstream" lattice for the SDK suite: everything goes to the deterministic mock.
[server]
listen = "127.0.0.1:0"

[upstreams.mock]
kind = "mock"

[[routes]]
model = "*"
upstream = "mock"

# Only the upstream denies these, so a client seeing this 429 proves the
# gateway really forwarded the request (and relays upstream errors).
[[deny]]
model = "gpt-upstream-limited"
status = 429
message = "upstream rate limit for gpt-upstream-limited"

[[deny]]
model = "claude-upstream-limited"
status = 429
message = "upstream rate limit for claude-upstream-limited"
`;

function gatewayConfig(uport) {
  return `# "gateway" lattice under test for the SDK suite.
[server]
listen = "127.0.0.1:0"
max_body_bytes = 1048576

[[deny]]
model = "forbidden-*"
status = 403
message = "model forbidden-* is blocked by policy"

[upstreams.openai_up]
kind = "openai"
base_url = "http://127.0.0.1:${uport}/v1"
api_key = "${UPSTREAM_SECRET}"

[upstreams.anthropic_up]
kind = "anthropic"
base_url = "http://127.0.0.1:${uport}"
api_key = "${UPSTREAM_SECRET}"

[upstreams.gemini_up]
kind = "gemini"
base_url = "http://127.0.0.1:${uport}"
api_key = "${UPSTREAM_SECRET}"

[upstreams.ollama_up]
kind = "ollama"
base_url = "http://127.0.0.1:${uport}"

[upstreams.local]
kind = "mock"

[[routes]]
model = "gpt-*"
upstream = "openai_up"

[[routes]]
model = "claude-*"
upstream = "anthropic_up"

[[routes]]
model = "gemini-*"
upstream = "gemini_up"

[[routes]]
model = "llama*"
upstream = "ollama_up"

[[routes]]
model = "demo"
upstream = "local"
aliases = ["demo-alias"]
`;
}

// ---- the built-in mock provider's contract --------------------------------
export const MOCK_PREFIX = 'Hello from the Lattice mock provider. You said:';
export const mockReply = (lastUserMessage) =>
  [MOCK_PREFIX, ...lastUserMessage.split(/\s+/).filter(Boolean).slice(0, 16)].join(' ');
export const words = (text) => text.split(/\s+/).filter(Boolean).length;
export const LONG_PROMPT =
  'please  repeat after me one two three four five six seven eight nine ten ' +
  'eleven twelve thirteen fourteen fifteen sixteen';
export const SHORT_PROMPT = 'Say hello to the SDK suite';

// ---- processes ----------------------------------------------------------------
/** Start `lattice serve --config configPath` in workdir; resolves once it prints its listening line. */
export function startLattice(name, configPath, workdir) {
  const stderrPath = path.join(workdir, `${name}.stderr.log`);
  const stderrFile = createWriteStream(stderrPath);
  const child = spawn(LATTICE_BIN, ['serve', '--config', configPath], {
    cwd: workdir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stderr.pipe(stderrFile);
  const stderrText = () => {
    try {
      return readFileSync(stderrPath, 'utf8');
    } catch {
      return '';
    }
  };

  return new Promise((resolve, reject) => {
    let buf = '';
    let settled = false;
    const seen = [];
    const fail = (reason) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      // Give the stderr pipe a moment to flush into the file.
      setTimeout(() => {
        reject(
          new Error(
            `lattice ${name} ${reason}\ncommand: ${LATTICE_BIN} serve --config ${configPath}\n` +
              `exit: code=${child.exitCode} signal=${child.signalCode}\n` +
              `stdout so far:\n${seen.join('\n')}\nstderr:\n${stderrText()}`,
          ),
        );
      }, 200);
    };
    const timer = setTimeout(
      () => fail(`did not print its listening line within ${STARTUP_TIMEOUT_MS / 1000}s`),
      STARTUP_TIMEOUT_MS,
    );
    // Keep consuming stdout for the whole life of the process (never block it).
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (data) => {
      if (settled) return;
      buf += data;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        seen.push(line);
        const m = LISTEN_RE.exec(line.trim());
        if (m && !settled) {
          settled = true;
          clearTimeout(timer);
          resolve({ name, child, baseUrl: m[1], stderrText });
          return;
        }
      }
    });
    child.on('error', (err) => fail(`could not be started: ${err.message}`));
    child.on('exit', () => fail('exited before it was listening'));
  });
}

/**
 * The config of a governed lattice: API keys in `data`, the policy bundle in `policies`, every
 * model on the built-in mock; `extra` (TOML tables) goes before `[server]`.
 */
export const governedConfig = (data, policies, extra = '') => `data_dir = ${JSON.stringify(data)}

[identity]
methods = ["api_key"]

[authorization]
policy_dir = ${JSON.stringify(policies)}
${extra}
[server]
listen = "127.0.0.1:0"

[upstreams.mock]
kind = "mock"

[[routes]]
model = "*"
upstream = "mock"
`;

/** Runs `lattice keys ARGS --data-dir DATA`; returns its stdout. */
export const latticeKeys = (data, ...args) =>
  execFileSync(LATTICE_BIN, ['keys', ...args, '--data-dir', data], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 30_000,
  });

/** Issues a key; returns { id, secret } (the secret is alone on the last line of stdout). */
export function createKey(data, team, user) {
  const out = latticeKeys(data, 'create', '--team', team, '--user', user);
  const secret = out.trim().split('\n').at(-1).trim();
  const id = /^id:\s*(\S+)/m.exec(out)?.[1];
  if (!secret || !id) throw new Error(`unexpected \`lattice keys create\` output:\n${out}`);
  return { id, secret };
}

export function stopProcess(proc) {
  const { child } = proc;
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(killer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/**
 * Start the upstream lattice, then the gateway lattice pointing at it.
 * Returns { baseUrl, upstreamUrl, stop() }. baseUrl has no trailing /v1.
 */
export async function startTopology() {
  try {
    accessSync(LATTICE_BIN, constants.X_OK);
  } catch {
    throw new Error(
      `lattice binary not found or not executable: ${LATTICE_BIN} ` +
        '(build it with `cargo build -p lattice-gateway` or set LATTICE_BIN)',
    );
  }
  const workdir = mkdtempSync(path.join(tmpdir(), 'lattice-sdk-node-'));
  const started = [];
  const stop = async () => {
    for (const p of started.reverse()) await stopProcess(p);
    rmSync(workdir, { recursive: true, force: true });
  };
  try {
    const upstreamCfg = path.join(workdir, 'upstream.toml');
    writeFileSync(upstreamCfg, UPSTREAM_CONFIG);
    const upstream = await startLattice('upstream', upstreamCfg, workdir);
    started.push(upstream);

    const uport = Number(new URL(upstream.baseUrl).port);
    const gatewayCfg = path.join(workdir, 'gateway.toml');
    writeFileSync(gatewayCfg, gatewayConfig(uport));
    const gateway = await startLattice('gateway', gatewayCfg, workdir);
    started.push(gateway);

    return { baseUrl: gateway.baseUrl, upstreamUrl: upstream.baseUrl, gateway, upstream, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
