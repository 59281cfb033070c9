// Offline check of deploy/k8s: every object of the kustomization must pass its Kubernetes
// schema (kubernetes-models) and the cross-object reference checks, and every fixture in
// fixtures/broken (one deliberate mistake each) must be rejected for the reason it names.
// When kubectl is on the PATH, its `kubectl kustomize` output must equal our assembly.
//
// usage: node validate.mjs DEPLOY_K8S_DIR
// Prints one line per check and "N passed, N failed"; exits 1 on any failure.
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";
import { loadKustomization, parseYamlDocs, validateObjects } from "./manifests.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const dir = process.argv[2];
if (!dir) {
  console.error("usage: node validate.mjs DEPLOY_K8S_DIR");
  process.exit(2);
}

let passed = 0;
let failed = 0;
const check = (ok, what, detail = "") => {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? "ok  " : "FAIL"} ${what}${detail ? `: ${detail}` : ""}`);
};

// The YAML reader itself refuses what Kubernetes would refuse.
for (const [what, text] of [["a duplicate key", "a: 1\na: 2\n"], ["a syntax error", "a: [1, 2\n"]]) {
  let threw = false;
  try { parseYamlDocs(text, "inline"); } catch { threw = true; }
  check(threw, `YAML with ${what} is refused`);
}

const kinds = ["StatefulSet", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"];
let set;
try {
  set = loadKustomization(dir);
  check(true, `assembled ${set.length} objects from ${dir}`);
} catch (e) {
  check(false, `assemble ${dir}`, e.message);
}

if (set) {
  const objs = set.map((x) => x.obj);
  const problems = await validateObjects(objs);
  check(problems.length === 0, "deploy/k8s passes schema and reference checks", problems.join("\n  "));
  for (const k of kinds)
    check(objs.some((o) => o.kind === k), `deploy/k8s has a ${k}`);

  // Each fixture: {expect, kind, name, set?: [{path, value}], delete?: [path]} applied
  // with the yaml library's document edits to a fresh copy of the real objects.
  const fixdir = path.join(here, "fixtures", "broken");
  const fixtures = readdirSync(fixdir).filter((f) => f.endsWith(".yaml")).sort();
  check(fixtures.length > 0, "broken fixtures present");
  for (const f of fixtures) {
    const file = path.join(fixdir, f);
    const fx = parseYamlDocs(readFileSync(file, "utf8"), file)[0].toJS();
    const copy = loadKustomization(dir);
    const target = copy.find((x) => x.obj.kind === fx.kind && x.obj.metadata.name === fx.name);
    if (!target || typeof fx.expect !== "string") {
      check(false, `fixture ${f}`, "needs expect, and kind/name of an object in deploy/k8s");
      continue;
    }
    for (const s of fx.set ?? []) target.doc.setIn(s.path, s.value);
    for (const p of fx.delete ?? []) {
      if (!target.doc.hasIn(p)) { check(false, `fixture ${f}`, `nothing at ${p.join("/")}`); continue; }
      target.doc.deleteIn(p);
    }
    const broken = copy.map((x) => (x === target ? x.doc.toJS() : x.obj));
    const got = await validateObjects(broken);
    const hit = got.some((p) => p.includes(fx.expect));
    check(got.length > 0 && hit, `fixture ${f} is rejected (${fx.expect})`,
      got.length === 0 ? "accepted" : hit ? "" : `rejected for another reason: ${got.join("; ")}`);
  }

  // The same assembly as kustomize, where kubectl is installed (it is optional).
  let kubectlOut = null;
  try {
    kubectlOut = execFileSync("kubectl", ["kustomize", dir], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    if (e.code === "ENOENT") console.log("skip kubectl kustomize comparison: kubectl not installed");
    else check(false, "kubectl kustomize", String(e.stderr || e.message).trim());
  }
  if (kubectlOut !== null) {
    const theirs = parseYamlDocs(kubectlOut, "kubectl kustomize").map((d) => d.toJS());
    const key = (o) => `${o.kind}/${o.metadata.name}`;
    const ours = new Map(objs.map((o) => [key(o), o]));
    const same = theirs.length === objs.length && theirs.every((o) => isDeepStrictEqual(o, ours.get(key(o))));
    check(same, "our assembly equals kubectl kustomize");
  }
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
