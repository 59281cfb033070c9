// Loading, checking and reading the Kubernetes manifests of deploy/k8s, for the deploy
// tests: kustomize-like assembly, schema validation with kubernetes-models, cross-object
// reference checks, and the container spec of a StatefulSet pod as the kubelet would run it.
import { readFileSync } from "node:fs";
import path from "node:path";
import { parseAllDocuments, isMap } from "yaml";

// Kustomization keys the assembly below implements; any other key is refused, so this
// assembly never silently differs from `kubectl kustomize`.
const KUSTOMIZE_KEYS = new Set(["apiVersion", "kind", "resources", "namespace"]);

// Kinds that live in a namespace (kustomize's `namespace:` applies to them).
const NAMESPACED = new Set([
  "ConfigMap", "Secret", "Service", "StatefulSet", "PodDisruptionBudget", "Deployment",
  "ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim", "NetworkPolicy",
]);

export class ManifestError extends Error {}

/* Parse every YAML document of `text`; each error names the file and the position.
 * YAML 1.1, as Kubernetes reads manifests: `defaultMode: 0440` is octal (288), `on` a
 * boolean. */
export function parseYamlDocs(text, file) {
  const docs = [];
  for (const doc of parseAllDocuments(text, { version: "1.1", prettyErrors: true, uniqueKeys: true })) {
    if (doc.errors.length)
      throw new ManifestError(`${file}: ${doc.errors.map((e) => e.message).join("; ")}`);
    if (doc.contents === null) continue; // an empty document (a trailing ---)
    if (!isMap(doc.contents)) throw new ManifestError(`${file}: a document is not a mapping`);
    docs.push(doc);
  }
  return docs;
}

/* The objects of a kustomization directory, in `resources` order: [{file, doc, obj}]. */
export function loadKustomization(dir) {
  const kfile = path.join(dir, "kustomization.yaml");
  const kdocs = parseYamlDocs(readFileSync(kfile, "utf8"), kfile);
  if (kdocs.length !== 1) throw new ManifestError(`${kfile}: expected one document`);
  const k = kdocs[0].toJS();
  for (const key of Object.keys(k))
    if (!KUSTOMIZE_KEYS.has(key))
      throw new ManifestError(`${kfile}: key '${key}' is not supported by this assembly`);
  if (k.kind !== "Kustomization") throw new ManifestError(`${kfile}: kind is not Kustomization`);
  if (!Array.isArray(k.resources) || k.resources.length === 0)
    throw new ManifestError(`${kfile}: resources must be a non-empty list`);
  const out = [];
  for (const res of k.resources) {
    if (typeof res !== "string" || res.includes("..") || path.isAbsolute(res))
      throw new ManifestError(`${kfile}: resource '${res}' must be a file in this directory`);
    const file = path.join(dir, res);
    for (const doc of parseYamlDocs(readFileSync(file, "utf8"), file)) {
      if (k.namespace && NAMESPACED.has(doc.getIn(["kind"])))
        doc.setIn(["metadata", "namespace"], k.namespace);
      out.push({ file, doc, obj: doc.toJS() });
    }
  }
  return out;
}

/* The kubernetes-models class for an object's apiVersion and kind. */
async function modelClass(obj) {
  const { apiVersion, kind } = obj;
  if (typeof apiVersion !== "string" || typeof kind !== "string" || !/^[A-Za-z]+$/.test(kind))
    throw new ManifestError("apiVersion and kind must be strings");
  const parts = apiVersion.split("/");
  if (parts.length > 2 || parts.some((p) => !/^[a-z0-9.]+$/.test(p)))
    throw new ManifestError(`bad apiVersion '${apiVersion}'`);
  let mod;
  try {
    mod = await import(`kubernetes-models/${apiVersion}/${kind}`);
  } catch {
    throw new ManifestError(`unknown apiVersion/kind ${apiVersion} ${kind}`);
  }
  if (typeof mod[kind] !== "function")
    throw new ManifestError(`unknown apiVersion/kind ${apiVersion} ${kind}`);
  return mod[kind];
}

const labelsMatch = (selector, labels) =>
  selector && Object.keys(selector).length > 0 &&
  Object.entries(selector).every(([k, v]) => labels && labels[k] === v);

/* Reference checks the schemas cannot make: what one object names must exist in another.
 * Returns a list of problems (strings). */
function crossCheck(objs) {
  const problems = [];
  const find = (kind, name) => objs.find((o) => o.kind === kind && o.metadata?.name === name);
  const seen = new Set();
  for (const o of objs) {
    const id = `${o.kind}/${o.metadata?.namespace ?? ""}/${o.metadata?.name}`;
    if (seen.has(id)) problems.push(`duplicate object ${o.kind} ${o.metadata?.name}`);
    seen.add(id);
  }
  for (const sts of objs.filter((o) => o.kind === "StatefulSet")) {
    const name = sts.metadata.name;
    const spec = sts.spec;
    const tlabels = spec.template?.metadata?.labels;
    if (!labelsMatch(spec.selector?.matchLabels, tlabels))
      problems.push(`StatefulSet ${name}: selector does not match the pod template's labels`);
    const svc = find("Service", spec.serviceName);
    if (!svc) problems.push(`StatefulSet ${name}: serviceName '${spec.serviceName}' is no Service`);
    else {
      if (svc.spec?.clusterIP !== "None")
        problems.push(`Service ${svc.metadata.name}: the StatefulSet's service must be headless`);
      if (svc.spec?.publishNotReadyAddresses !== true)
        problems.push(`Service ${svc.metadata.name}: must publish not-ready addresses (members find each other before they are ready)`);
    }
    const pod = spec.template?.spec ?? {};
    const volumes = new Set([
      ...(pod.volumes ?? []).map((v) => v.name),
      ...(spec.volumeClaimTemplates ?? []).map((v) => v.metadata?.name),
    ]);
    for (const v of pod.volumes ?? []) {
      if (v.secret && !find("Secret", v.secret.secretName))
        problems.push(`StatefulSet ${name}: volume ${v.name}: no Secret '${v.secret.secretName}'`);
      if (v.configMap && !find("ConfigMap", v.configMap.name))
        problems.push(`StatefulSet ${name}: volume ${v.name}: no ConfigMap '${v.configMap.name}'`);
    }
    for (const c of pod.containers ?? []) {
      const where = `StatefulSet ${name} container ${c.name}`;
      const portNames = new Set((c.ports ?? []).map((p) => p.name));
      for (const m of c.volumeMounts ?? [])
        if (!volumes.has(m.name)) problems.push(`${where}: volumeMount '${m.name}' names no volume`);
      for (const ef of c.envFrom ?? []) {
        if (ef.configMapRef && !find("ConfigMap", ef.configMapRef.name))
          problems.push(`${where}: envFrom: no ConfigMap '${ef.configMapRef.name}'`);
        if (ef.secretRef && !find("Secret", ef.secretRef.name))
          problems.push(`${where}: envFrom: no Secret '${ef.secretRef.name}'`);
      }
      for (const e of c.env ?? []) {
        const ref = e.valueFrom?.configMapKeyRef ?? e.valueFrom?.secretKeyRef;
        if (!ref) continue;
        const o = find(e.valueFrom.configMapKeyRef ? "ConfigMap" : "Secret", ref.name);
        const data = { ...(o?.data ?? {}), ...(o?.stringData ?? {}) };
        if (!o || !(ref.key in data)) problems.push(`${where}: env ${e.name}: no key ${ref.name}/${ref.key}`);
      }
      for (const probe of ["startupProbe", "livenessProbe", "readinessProbe"]) {
        const port = c[probe]?.httpGet?.port;
        if (typeof port === "string" && !portNames.has(port))
          problems.push(`${where}: ${probe} port '${port}' is no container port`);
      }
    }
    for (const svc of objs.filter((o) => o.kind === "Service" && labelsMatch(o.spec?.selector, tlabels))) {
      const ports = new Set(pod.containers.flatMap((c) => (c.ports ?? []).map((p) => p.name)));
      for (const p of svc.spec.ports ?? [])
        if (typeof p.targetPort === "string" && !ports.has(p.targetPort))
          problems.push(`Service ${svc.metadata.name}: targetPort '${p.targetPort}' is no container port`);
    }
  }
  for (const svc of objs.filter((o) => o.kind === "Service")) {
    const pods = objs.filter((o) => o.kind === "StatefulSet" &&
      labelsMatch(svc.spec?.selector, o.spec.template?.metadata?.labels));
    if (pods.length === 0) problems.push(`Service ${svc.metadata.name}: selector matches no pods`);
  }
  for (const pdb of objs.filter((o) => o.kind === "PodDisruptionBudget")) {
    const pods = objs.filter((o) => o.kind === "StatefulSet" &&
      labelsMatch(pdb.spec?.selector?.matchLabels, o.spec.template?.metadata?.labels));
    if (pods.length === 0) problems.push(`PodDisruptionBudget ${pdb.metadata.name}: selector matches no pods`);
  }
  return problems;
}

/* Validate every object: its schema (kubernetes-models) and the references between them.
 * Returns a list of problems, empty when all is well. */
export async function validateObjects(objs) {
  const problems = [];
  for (const obj of objs) {
    const label = `${obj.kind ?? "?"} ${obj.metadata?.name ?? "?"}`;
    try {
      const Model = await modelClass(obj);
      new Model(obj).validate();
    } catch (e) {
      problems.push(`${label}: ${e.message}`);
    }
  }
  // Reference checks assume well-typed objects.
  if (problems.length === 0) problems.push(...crossCheck(objs));
  return problems;
}

/* Kubernetes' $(VAR) expansion of command, args and env values: $$ is a literal $,
 * $(NAME) is the variable's value when NAME is defined and stays as written otherwise. */
export function expandVars(s, env) {
  let out = "";
  for (let i = 0; i < s.length; i++) {
    if (s[i] !== "$" || i + 1 === s.length) { out += s[i]; continue; }
    if (s[i + 1] === "$") { out += "$"; i++; continue; }
    if (s[i + 1] === "(") {
      const end = s.indexOf(")", i + 2);
      if (end >= 0) {
        const name = s.slice(i + 2, end);
        if (Object.hasOwn(env, name)) { out += env[name]; i = end; continue; }
      }
    }
    out += "$";
  }
  return out;
}

/* What the kubelet would run for pod `ordinal` of StatefulSet `stsName`: argv, environment
 * (envFrom, env with fieldRef/configMapKeyRef/secretKeyRef, then HOSTNAME as the runtime
 * sets it), the volumes with their contents, the preStop command, the probes and the
 * grace period. `podIP` and `namespace` stand for what the cluster would give. */
export function podContainer(objs, stsName, ordinal, { podIP, namespace, imagePath }) {
  const sts = objs.find((o) => o.kind === "StatefulSet" && o.metadata.name === stsName);
  if (!sts) throw new ManifestError(`no StatefulSet ${stsName}`);
  const podName = `${stsName}-${ordinal}`;
  const pod = sts.spec.template.spec;
  if (pod.containers.length !== 1) throw new ManifestError("expected one container");
  const c = pod.containers[0];
  const find = (kind, name) => {
    const o = objs.find((x) => x.kind === kind && x.metadata.name === name);
    if (!o) throw new ManifestError(`no ${kind} ${name}`);
    return o;
  };
  const dataOf = (o) => {
    const d = { ...(o.stringData ?? {}) };
    for (const [k, v] of Object.entries(o.data ?? {}))
      d[k] = o.kind === "Secret" ? Buffer.from(v, "base64").toString("utf8") : v;
    return d;
  };
  const fields = {
    "metadata.name": podName,
    "metadata.namespace": namespace,
    "status.podIP": podIP,
    "spec.nodeName": "localhost",
    "spec.serviceAccountName": "default",
  };
  // The image's environment (Dockerfile ENV), then the pod's.
  const env = { PATH: imagePath };
  for (const ef of c.envFrom ?? []) {
    const o = ef.configMapRef ? find("ConfigMap", ef.configMapRef.name) : find("Secret", ef.secretRef.name);
    for (const [k, v] of Object.entries(dataOf(o))) env[(ef.prefix ?? "") + k] = v;
  }
  for (const e of c.env ?? []) {
    if ("value" in e) env[e.name] = expandVars(String(e.value), env);
    else if (e.valueFrom?.fieldRef) {
      const v = fields[e.valueFrom.fieldRef.fieldPath];
      if (v === undefined) throw new ManifestError(`fieldRef ${e.valueFrom.fieldRef.fieldPath} not emulated`);
      env[e.name] = v;
    } else if (e.valueFrom?.configMapKeyRef || e.valueFrom?.secretKeyRef) {
      const ref = e.valueFrom.configMapKeyRef ?? e.valueFrom.secretKeyRef;
      env[e.name] = dataOf(find(e.valueFrom.configMapKeyRef ? "ConfigMap" : "Secret", ref.name))[ref.key];
    } else throw new ManifestError(`env ${e.name}: source not emulated`);
  }
  // The container runtime sets HOSTNAME to the pod's hostname (its name in a StatefulSet).
  env.HOSTNAME = podName;
  const argv = [...(c.command ?? []), ...(c.args ?? [])].map((a) => expandVars(a, env));
  if (argv.length === 0) throw new ManifestError("the container has no command (the image's ENTRYPOINT is not emulated)");
  const claims = new Set((sts.spec.volumeClaimTemplates ?? []).map((v) => v.metadata.name));
  const mounts = (c.volumeMounts ?? []).map((m) => {
    if (claims.has(m.name))
      return { path: m.mountPath, readOnly: !!m.readOnly, kind: "claim", claim: `${m.name}-${podName}` };
    const v = (pod.volumes ?? []).find((x) => x.name === m.name);
    if (v?.secret || v?.configMap) {
      const o = v.secret ? find("Secret", v.secret.secretName) : find("ConfigMap", v.configMap.name);
      const src = v.secret ?? v.configMap;
      const mode = src.defaultMode ?? 0o644;
      return { path: m.mountPath, readOnly: true, kind: "files", mode, files: dataOf(o) };
    }
    if (v?.emptyDir) return { path: m.mountPath, readOnly: false, kind: "emptyDir" };
    throw new ManifestError(`volume ${m.name}: kind not emulated`);
  });
  const probe = (p) => p?.httpGet && {
    path: p.httpGet.path,
    port: typeof p.httpGet.port === "number" ? p.httpGet.port
      : c.ports.find((x) => x.name === p.httpGet.port).containerPort,
  };
  const sc = { ...(pod.securityContext ?? {}), ...(c.securityContext ?? {}) };
  return {
    pod: podName,
    argv,
    env,
    mounts,
    preStop: c.lifecycle?.preStop?.exec?.command ?? null,
    probes: { startup: probe(c.startupProbe), liveness: probe(c.livenessProbe), readiness: probe(c.readinessProbe) },
    ports: Object.fromEntries((c.ports ?? []).map((p) => [p.name, p.containerPort])),
    grace: pod.terminationGracePeriodSeconds ?? 30,
    runAsUser: sc.runAsUser ?? null,
    runAsGroup: sc.runAsGroup ?? null,
    fsGroup: pod.securityContext?.fsGroup ?? null,
    readOnlyRoot: !!sc.readOnlyRootFilesystem,
    replicas: sts.spec.replicas,
  };
}
