// A TypeScript provider for the cross-language trace test: `ts.upper` answers with its
// request upper-cased. Prints "ready" once registered; serves until its stdin closes.
//
// usage: node ts_upper.mjs ENDPOINT   (after `npm run build` in bindings/typescript)
import { Methods, Payload, Provider } from "../../bindings/typescript/dist/src/index.js";

const methods = new Methods().add("ts.upper", (req) => Payload.raw(new TextDecoder().decode(req.bytes).toUpperCase()), {
  summary: "upper-cases its request",
});
const provider = await Provider.connect(process.argv[2], methods, { serviceName: "ts-upper" });
console.log("ready");
process.stdin.resume();
process.stdin.on("end", async () => {
  await provider.flushSpans();
  await provider.close();
  process.exit(0);
});
