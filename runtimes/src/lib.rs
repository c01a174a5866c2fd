//! `lattice-runtimes`: the hands of an agent: `execute(name, input) -> output` backends (local
//! process, git worktree, SSH host, container, MCP upstream), provisioned lazily.
//!
//! Empty until the runtime issue lands; the crate exists so the workspace layout is the
//! architecture from the first commit (DESIGN.md, "Layout").
