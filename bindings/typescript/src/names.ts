/** Service and method names: validation and the `SERVICE.METHOD` full name. */

/** Longest service name, in bytes. */
export const MAX_SERVICE_LEN = 128;
/** Longest method name, in bytes. */
export const MAX_METHOD_LEN = 64;

const SEGMENT = /^[A-Za-z][A-Za-z0-9_-]*$/;

/** Why `name` is not a valid service (`dotted`) or method name; `null` when it is. */
export function nameProblem(kind: "service" | "method", name: string): string | null {
  const max = kind === "service" ? MAX_SERVICE_LEN : MAX_METHOD_LEN;
  if (name.length === 0) return `${kind} name is empty`;
  const len = Buffer.byteLength(name, "utf8");
  if (len > max) return `${kind} name is ${len} bytes; at most ${max} are allowed`;
  const segments = kind === "service" ? name.split(".") : [name];
  if (!segments.every((s) => SEGMENT.test(s))) {
    return `${kind} name ${JSON.stringify(name)} is invalid: each segment starts with a letter and continues with letters, digits, '_' or '-'`;
  }
  return null;
}

/** Splits `SERVICE.METHOD` at the last `.`; `null` when either part is invalid. */
export function splitFullName(full: string): [string, string] | null {
  const dot = full.lastIndexOf(".");
  if (dot <= 0) return null;
  const service = full.slice(0, dot);
  const method = full.slice(dot + 1);
  if (nameProblem("service", service) !== null || nameProblem("method", method) !== null) return null;
  return [service, method];
}
