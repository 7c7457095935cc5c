// eslint.config.js: flat config: typescript-eslint recommended (type-aware) for src/ and test/.
// console/ and test/browser/ belong to the console's own checks and are linted with the recommended (not type-aware) rules.
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "test-results/**"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ["src/**/*.ts", "test/*.ts", "test/support/**/*.ts", "vitest.config.ts"],
    extends: [...tseslint.configs.recommendedTypeChecked],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
    },
  },
  {
    files: ["src/**/*.ts"],
    rules: {
      // The client runs in browsers: no Node built-ins in src/.
      "no-restricted-imports": ["error", { patterns: ["node:*", "ws"] }],
    },
  },
  {
    files: ["scripts/**/*.mjs", "eslint.config.js"],
    languageOptions: { globals: { process: "readonly", console: "readonly" } },
  },
);
