// Validates a .glb with the Khronos glTF validator (npm gltf-validator; `make test` installs it into .tools/)
// and prints its report as JSON. Usage: NODE_PATH=.tools/node_modules node tests/validate_gltf.js FILE.glb
const fs = require("fs");
const validator = require("gltf-validator");

const bytes = new Uint8Array(fs.readFileSync(process.argv[2]));
validator
  .validateBytes(bytes, { maxIssues: 200 })
  .then((report) => console.log(JSON.stringify(report)))
  .catch((error) => {
    console.error(String(error));
    process.exit(2);
  });
