// Checks KEDA resources (JSON list on stdin) against KEDA's CRDs, as
// @kubernetes-models/keda generates them: its validators (types, required
// fields, enums, formats) and, through TypeScript, its types, which also
// refuse a field the CRD does not know (a misspelt field would otherwise be
// dropped without a word by the API server). Prints one line per problem;
// exits 1 if there is any.
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const here = path.dirname(fileURLToPath(import.meta.url));
const kinds = {
  ScaledObject: "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject",
  TriggerAuthentication: "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication",
};

const resources = JSON.parse(readFileSync(0, "utf8"));
const problems = [];
const lines = [];
const where = (r) => [r.kind, r.metadata?.namespace, r.metadata?.name].filter(Boolean).join("/");
for (const [i, resource] of resources.entries()) {
  const module = kinds[resource.kind];
  if (resource.apiVersion !== "keda.sh/v1alpha1" || !module) {
    problems.push(`${where(resource)}: not a KEDA resource this check knows`);
    continue;
  }
  const { [resource.kind]: Model } = await import(module);
  try {
    new Model(resource).validate();
  } catch (error) {
    problems.push(`${where(resource)}: ${error.message}`);
  }
  lines.push(`import type { I${resource.kind} as T${i} } from "${module}";`);
  lines.push(`export const r${i}: T${i} = ${JSON.stringify(resource)};`);
}

const file = path.join(here, "keda-resources.ts");
const options = {
  strict: true,
  noEmit: true,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  target: ts.ScriptTarget.ES2022,
  skipLibCheck: true,
};
const host = ts.createCompilerHost(options);
const source = lines.join("\n");
const readFile = host.readFile.bind(host);
const getSourceFile = host.getSourceFile.bind(host);
host.readFile = (name) => (name === file ? source : readFile(name));
host.fileExists = ((exists) => (name) => name === file || exists(name))(host.fileExists.bind(host));
host.getSourceFile = (name, language, ...rest) =>
  name === file
    ? ts.createSourceFile(name, source, language)
    : getSourceFile(name, language, ...rest);
const program = ts.createProgram([file], options, host);
for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
  const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, " ");
  const at = diagnostic.file && diagnostic.start !== undefined
    ? diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start)
    : null;
  const index = at ? Math.floor(at.line / 2) : -1;
  const resource = resources.filter((r) => kinds[r.kind])[index];
  problems.push(`${resource ? where(resource) : "?"}: ${message}`);
}

for (const problem of problems) console.log(problem);
process.exit(problems.length ? 1 : 0);
