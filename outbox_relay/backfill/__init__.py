"""Ways to recover messages that never reached the archive, each ending in the same outbox commit.

`feishu` reads chat history back from Feishu's Open API (`feishu_api` is its HTTP client);
`openclaw` reads OpenClaw's own transcripts (`openclaw_sources` finds and opens them, `openclaw_files`
reads the files without trusting them). Both commit through commit.Committer, with one set of rules.
Each backfill takes a `progress` object and returns a report dict; the CLI draws and prints.
"""
