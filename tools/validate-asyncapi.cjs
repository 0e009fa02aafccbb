// Cross-checks specs/asyncapi.yaml with the official AsyncAPI parser, which
// resolves the external payload refs into specs/events/*.json.
// Usage: NODE_PATH=<node_modules> node tools/validate-asyncapi.cjs specs/asyncapi.yaml
const { Parser, fromFile } = require('@asyncapi/parser');

async function main() {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: validate-asyncapi.cjs <asyncapi.yaml>');
    process.exit(2);
  }
  const parser = new Parser();
  const { document, diagnostics } = await fromFile(parser, file).parse();
  // Severity 0 is an error, 1 a warning; both fail so the document stays clean.
  const problems = diagnostics.filter((d) => d.severity <= 1);
  for (const d of problems) {
    console.error(`${file}#/${d.path.join('/')}: ${d.message} (${d.code})`);
  }
  if (!document || problems.length > 0) {
    process.exit(1);
  }
  console.log(`${file}: OK (${document.messages().length} messages, ${document.channels().length} channels)`);
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
