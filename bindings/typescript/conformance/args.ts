/** Command-line flags of the conformance and bench programs: `--name value` pairs. */

/** The flags of `argv` (after the script), as name → values. */
export function parseArgs(argv: string[], usage: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = argv[i + 1];
    if (!a.startsWith("--") || v === undefined) {
      process.stderr.write(`unexpected argument ${JSON.stringify(a)}\nusage: ${usage}\n`);
      process.exit(2);
    }
    out.set(a.slice(2), [...(out.get(a.slice(2)) ?? []), v]);
    i++;
  }
  return out;
}

/** The one value of a required flag (exits with usage when missing). */
export function required(args: Map<string, string[]>, name: string, usage: string): string {
  const v = args.get(name)?.[0];
  if (v === undefined) {
    process.stderr.write(`missing --${name}\nusage: ${usage}\n`);
    process.exit(2);
  }
  return v;
}
